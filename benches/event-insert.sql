-- The raw baseline's transaction: one event-like row (a real weather
-- observation's payload) into `bench_events`, numbered by `bench_seq`.
INSERT INTO bench_events (position, event_id, aggregate_type, aggregate_id, stream_version, study_id, event_type,
  schema_version, data, actor, reason, correlation_id, causation_id, recorded_at, prevhash, hash)
VALUES (nextval('bench_seq'), gen_random_uuid(), 'observation', gen_random_uuid(), 1, gen_random_uuid(),
  'research.observation.recorded.v1', 1,
  '{"comment":null,"observation_id":"0192f0c1-0000-7000-8000-000000000001","observed_at":"2013-01-01T06:00:00Z","study_id":"0192f0c1-0000-7000-8000-000000000002","subject_id":"0192f0c1-0000-7000-8000-000000000003","values":{"dewpoint_f":26.06,"humidity_pct":59.37,"precip_in":0.0,"pressure_mbar":1012.0,"temp_f":39.02,"visibility_mi":10.0,"wind_dir_deg":270.0,"wind_gust_mph":null,"wind_speed_mph":10.357019999999999}}',
  'bench', NULL, 'bench', 'bench', now(), decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'));
