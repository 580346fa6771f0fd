//! Line charts as self-contained SVG text, for the benchmark report: axes
//! with round ticks, one polyline per series, a legend. The text is drawn by
//! whatever shows the SVG, so no font is needed here.

use std::fmt::Write;

/// One series of a chart.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    /// `(x, y)` points in x order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
}

/// How the x axis is labelled: by numbers, or by names at given positions.
#[derive(Debug, Clone)]
pub enum XAxis {
    Numbers,
    Names(Vec<(f64, String)>),
}

const WIDTH: f64 = 820.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 46.0;
const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// A line chart of `lines`, the y axis from 0 (or the lowest value, when
/// negative) to a round number above the highest.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, x: &XAxis, lines: &[Line]) -> String {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = lines
        .iter()
        .flat_map(|l| l.points.iter().filter(finite).copied())
        .collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="20" font-size="14" text-anchor="middle">{}</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        escape(title)
    );
    if all.is_empty() {
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#777">no data</text></svg>"##,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        return svg;
    }
    let (mut x0, mut x1) = bounds(all.iter().map(|p| p.0));
    if let XAxis::Names(names) = x {
        let (n0, n1) = bounds(names.iter().map(|n| n.0));
        x0 = x0.min(n0);
        x1 = x1.max(n1);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let (low, high) = bounds(all.iter().map(|p| p.1));
    let y_step = nice_step((high - low.min(0.0)).max(f64::MIN_POSITIVE) / 5.0);
    let y0 = if low < 0.0 {
        (low / y_step).floor() * y_step
    } else {
        0.0
    };
    let mut y1 = (high / y_step).ceil() * y_step;
    if y1 <= y0 {
        y1 = y0 + y_step;
    }
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |v: f64| LEFT + (v - x0) / (x1 - x0) * plot_w;
    let sy = |v: f64| TOP + plot_h - (v - y0) / (y1 - y0) * plot_h;

    // Grid and y ticks.
    let mut v = y0;
    while v <= y1 + y_step / 2.0 {
        let y = sy(v);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            number(v, y_step)
        );
        v += y_step;
    }
    // x ticks.
    match x {
        XAxis::Numbers => {
            let step = nice_step((x1 - x0) / 6.0);
            let mut v = (x0 / step).ceil() * step;
            while v <= x1 + step / 1e6 {
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                    sx(v),
                    TOP + plot_h + 16.0,
                    number(v, step)
                );
                v += step;
            }
        }
        XAxis::Names(names) => {
            for (at, name) in names {
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                    sx(*at),
                    TOP + plot_h + 16.0,
                    escape(name)
                );
            }
        }
    }
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 8.0,
        escape(x_label),
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = line
            .points
            .iter()
            .filter(finite)
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        if points.len() == 1 {
            let _ = write!(
                svg,
                r#"<circle cx="{}" r="3" fill="{color}"/>"#,
                points[0].replace(',', r#"" cy=""#)
            );
        } else if !points.is_empty() {
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
                points.join(" ")
            );
        }
        let ly = TOP + 8.0 + i as f64 * 16.0;
        let lx = LEFT + plot_w + 12.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            escape(&line.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power)
}

/// `v` with as many decimals as `step` needs.
fn number(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    // Round away a negative zero ("-0").
    let text = format!("{v:.decimals$}");
    if text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        text.trim_start_matches('-').to_owned()
    } else {
        text
    }
}

/// Text made safe inside SVG and HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round_and_cover_the_range() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.2), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(23.0), 50.0);
        assert!((nice_step(0.013) - 0.02).abs() < 1e-12);
        assert_eq!(number(0.25, 0.05), "0.25");
        assert_eq!(number(1500.0, 500.0), "1500");
        assert_eq!(number(-0.0001, 20.0), "0");
    }

    #[test]
    fn a_chart_draws_each_series_with_its_legend_and_escapes_text() {
        let lines = vec![
            Line {
                name: "p99 <record>".into(),
                points: vec![(0.0, 1.0), (5.0, 3.0), (10.0, f64::NAN), (15.0, 2.0)],
            },
            Line {
                name: "p50".into(),
                points: vec![(0.0, 0.5)],
            },
        ];
        let svg = line_chart("Latency", "s", "ms", &XAxis::Numbers, &lines);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("p99 &lt;record&gt;"));
        // Three finite points of the first series, the NaN skipped.
        let polyline = svg.split("points=\"").nth(1).unwrap();
        assert_eq!(polyline.split('"').next().unwrap().split(' ').count(), 3);
        let empty = line_chart("Nothing", "s", "ms", &XAxis::Numbers, &[]);
        assert!(empty.contains("no data"));
    }
}
