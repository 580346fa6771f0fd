//! Bearer JWT authentication (HS256 pinned, `exp` required) and the
//! principal it yields; also the minting used by development tools.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::PrincipalId;
use crate::problem::Problem;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Writer,
    Reviewer,
    Reader,
    Auditor,
    Admin,
}

impl Role {
    const fn bit(self) -> u8 {
        1 << self as u8
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "writer" => Some(Self::Writer),
            "reviewer" => Some(Self::Reviewer),
            "reader" => Some(Self::Reader),
            "auditor" => Some(Self::Auditor),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// The claims of a token of this service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub studies: Option<Vec<Uuid>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// The authenticated caller: the actor recorded on every event it causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: PrincipalId,
    roles: u8,
    /// The studies the token is limited to; `None` means all.
    pub studies: Option<Vec<Uuid>>,
}

impl Principal {
    pub fn new(id: PrincipalId, roles: &[Role], studies: Option<Vec<Uuid>>) -> Self {
        Self {
            id,
            roles: roles.iter().fold(0, |acc, r| acc | r.bit()),
            studies,
        }
    }

    /// Whether the principal holds the role; `admin` holds every role.
    pub fn has(&self, role: Role) -> bool {
        self.roles & (role.bit() | Role::Admin.bit()) != 0
    }

    pub fn require(&self, role: Role) -> Result<(), Problem> {
        if self.has(role) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "this needs the {} role",
                serde_json::to_value(role)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )))
        }
    }

    pub fn may_access_study(&self, study_id: Uuid) -> bool {
        self.studies.as_ref().is_none_or(|s| s.contains(&study_id))
    }
}

/// Tokens kept verified; more are forgotten all at once.
const VERIFIED_TOKENS: usize = 10_000;

/// Validates bearer tokens with the shared secret. A token that verified is
/// remembered until it expires, so that a client sending the same token on
/// every request pays for the signature once (the answer depends only on the
/// token's bytes and the clock).
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    verified: RwLock<HashMap<Box<str>, (Principal, i64)>>,
}

impl Authenticator {
    /// An empty issuer or audience counts as none (an `.env` line left
    /// empty).
    pub fn new(secret: &[u8], issuer: Option<&str>, audience: Option<&str>) -> Self {
        let issuer = issuer.filter(|s| !s.is_empty());
        let audience = audience.filter(|s| !s.is_empty());
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
            verified: RwLock::new(HashMap::new()),
        }
    }

    /// Checks an `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Problem> {
        let header = authorization
            .ok_or_else(|| Problem::unauthorized("an Authorization: Bearer token is required"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                Problem::unauthorized("the Authorization header must be a Bearer token")
            })?;
        let token = token.trim();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let leeway = self.validation.leeway as i64;
        if let Some((principal, exp)) = self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
        {
            if now < exp + leeway {
                return Ok(principal.clone());
            }
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "the token's signature does not verify",
                    ErrorKind::InvalidAlgorithm => "the token must be signed with HS256",
                    ErrorKind::MissingRequiredClaim(_) => {
                        "the token lacks a required claim (sub, exp)"
                    }
                    ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
                    ErrorKind::InvalidAudience => "the token's audience is not accepted",
                    _ => "the token is malformed",
                };
                Problem::unauthorized(why)
            })?;
        let claims = data.claims;
        let id = PrincipalId::parse(claims.sub)
            .map_err(|e| Problem::unauthorized(format!("the token's sub {e}")))?;
        let roles: Vec<Role> = claims.roles.iter().filter_map(|r| Role::parse(r)).collect();
        let principal = Principal::new(id, &roles, claims.studies);
        let mut verified = self.verified.write().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_TOKENS {
            verified.clear();
        }
        verified.insert(token.into(), (principal.clone(), claims.exp));
        Ok(principal)
    }
}

/// Anything that can hand out the shared [`Authenticator`].
pub trait HasAuthenticator {
    fn authenticator(&self) -> &Authenticator;
}

impl<S> FromRequestParts<S> for Principal
where
    S: HasAuthenticator + Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.to_str());
        let header = match header {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                return Err(Problem::unauthorized(
                    "the Authorization header is not ASCII",
                ))
            }
            None => None,
        };
        state.authenticator().authenticate(header)
    }
}

impl<T: HasAuthenticator> HasAuthenticator for Arc<T> {
    fn authenticator(&self) -> &Authenticator {
        (**self).authenticator()
    }
}

/// Mints a token, as any client knowing the secret can.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing with a byte secret cannot fail")
}

/// Claims for `sub` with `roles`, valid for `ttl_seconds` from now.
pub fn claims_for(sub: &str, roles: &[Role], ttl_seconds: i64) -> Claims {
    Claims {
        sub: sub.to_owned(),
        roles: roles
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok()?.as_str().map(str::to_owned))
            .collect(),
        exp: chrono::Utc::now().timestamp() + ttl_seconds,
        nbf: None,
        studies: None,
        iss: None,
        aud: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    #[test]
    fn a_minted_token_authenticates_with_its_roles() {
        let auth = Authenticator::new(SECRET, None, None);
        let token = mint(SECRET, &claims_for("alice", &[Role::Writer], 60));
        let p = auth.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(p.id.as_str(), "alice");
        assert!(p.has(Role::Writer));
        assert!(!p.has(Role::Reviewer));
    }

    #[test]
    fn admin_holds_every_role() {
        let p = Principal::new(PrincipalId::parse("root").unwrap(), &[Role::Admin], None);
        assert!(p.has(Role::Reviewer) && p.has(Role::Auditor));
    }

    #[test]
    fn expired_wrong_secret_and_wrong_algorithm_are_refused() {
        let auth = Authenticator::new(SECRET, None, None);
        let expired = mint(SECRET, &claims_for("a", &[Role::Writer], -3600));
        assert!(auth
            .authenticate(Some(&format!("Bearer {expired}")))
            .is_err());
        let other = mint(b"other", &claims_for("a", &[Role::Writer], 60));
        assert!(auth.authenticate(Some(&format!("Bearer {other}"))).is_err());
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims_for("a", &[Role::Writer], 60),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(auth.authenticate(Some(&format!("Bearer {hs512}"))).is_err());
        assert!(auth.authenticate(None).is_err());
        assert!(auth.authenticate(Some("Basic abc")).is_err());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let auth = Authenticator::new(SECRET, Some("lab"), Some("records"));
        let mut claims = claims_for("a", &[Role::Reader], 60);
        let bare = mint(SECRET, &claims);
        assert!(auth.authenticate(Some(&format!("Bearer {bare}"))).is_err());
        claims.iss = Some("lab".into());
        claims.aud = Some("records".into());
        let good = mint(SECRET, &claims);
        assert!(auth.authenticate(Some(&format!("Bearer {good}"))).is_ok());
    }

    #[test]
    fn a_sub_with_a_control_character_or_too_long_is_refused() {
        let auth = Authenticator::new(SECRET, None, None);
        for sub in ["nul\0sub", "tab\tsub", "", &"x".repeat(257)] {
            let token = mint(SECRET, &claims_for(sub, &[Role::Writer], 60));
            let refused = auth.authenticate(Some(&format!("Bearer {token}")));
            assert_eq!(refused.map_err(|p| p.status.as_u16()), Err(401), "{sub:?}");
        }
        let token = mint(SECRET, &claims_for(&"é".repeat(256), &[Role::Writer], 60));
        assert!(auth.authenticate(Some(&format!("Bearer {token}"))).is_ok());
    }

    #[test]
    fn a_token_is_refused_before_its_nbf() {
        let auth = Authenticator::new(SECRET, None, None);
        let mut claims = claims_for("a", &[Role::Reader], 3600);
        claims.nbf = Some(chrono::Utc::now().timestamp() + 600);
        let early = mint(SECRET, &claims);
        assert!(auth.authenticate(Some(&format!("Bearer {early}"))).is_err());
        claims.nbf = Some(chrono::Utc::now().timestamp() - 10);
        let ripe = mint(SECRET, &claims);
        assert!(auth.authenticate(Some(&format!("Bearer {ripe}"))).is_ok());
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let auth = Authenticator::new(SECRET, None, None);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // An entry the signature would refuse shows that the memory answers,
        // and is believed only until its expiry (plus the leeway).
        let remembered = |exp| {
            auth.verified.write().unwrap().insert(
                "not.a.token".into(),
                (
                    Principal::new(PrincipalId::parse("x").unwrap(), &[Role::Reader], None),
                    exp,
                ),
            );
        };
        remembered(now + 60);
        assert!(auth.authenticate(Some("Bearer not.a.token")).is_ok());
        remembered(now - 31);
        assert!(auth.authenticate(Some("Bearer not.a.token")).is_err());
        let refused = mint(SECRET, &claims_for("a", &[Role::Reader], -3600));
        assert!(auth
            .authenticate(Some(&format!("Bearer {refused}")))
            .is_err());
        assert!(
            !auth.verified.read().unwrap().contains_key(refused.as_str()),
            "a refusal is not remembered"
        );
    }
}
