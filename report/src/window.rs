//! `report_dhash window`: one self-contained HTML page for one watch (no
//! network, opens from disk), with one SVG chart per gate drawn by plotters:
//! the gate's figure over the window, its threshold, each violation, and
//! the rollback and the return to health as events. The data is the
//! watch's events file (every gate decision carries its value, threshold,
//! status and sample time), found through the ledger's monitor records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use chrono::{DateTime, Utc};
use gates_core::config::EnvConfig;
use gates_core::exit::usage_error;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde_json::Value;

use crate::figures::{incident_times, rfc3339};
use crate::history::{self, parse_ts, WatchEvent};

/// One gate decision as charted.
#[derive(Debug, Clone)]
struct Point {
    t: DateTime<Utc>,
    value: Option<f64>,
    threshold: Option<f64>,
    status: String,
    unit: String,
}

/// The watch the page is about: the newest monitor record naming an events
/// file, of `release` or with `recording`, when given.
pub fn find_watch(
    env: &EnvConfig,
    release: Option<&str>,
    recording: Option<&Path>,
) -> anyhow::Result<(Option<String>, PathBuf)> {
    let records = history::read_ledger(&env.ledger_path())?;
    records
        .iter()
        .rev()
        .filter(|r| r.kind == history::MONITOR)
        .filter(|r| release.is_none_or(|w| r.str("release") == Some(w)))
        .filter(|r| recording.is_none_or(|p| r.str("recording").map(Path::new) == Some(p)))
        .find_map(|r| {
            Some((
                r.str("release").map(str::to_string),
                PathBuf::from(r.str("events")?),
            ))
        })
        .ok_or_else(|| {
            usage_error(format!(
                "no watch of {} recorded in {} matches {}",
                env.name,
                env.ledger_path().display(),
                match (release, recording) {
                    (Some(r), _) => format!("release {r}"),
                    (_, Some(p)) => format!("recording {}", p.display()),
                    _ => "(there is none)".to_string(),
                }
            ))
        })
}

fn series(events: &[WatchEvent]) -> BTreeMap<String, Vec<Point>> {
    let mut out: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.event.starts_with("gate.")) {
        let (Some(gate), Some(t)) = (e.str("gate"), e.str("sample_ts").and_then(parse_ts)) else {
            continue;
        };
        let num = |f: &str| e.fields.get(f).and_then(Value::as_f64);
        out.entry(gate.to_string()).or_default().push(Point {
            t,
            value: num("value"),
            threshold: num("threshold"),
            status: e.str("status").unwrap_or_default().to_string(),
            unit: e.str("unit").unwrap_or_default().to_string(),
        });
    }
    out
}

/// Seconds since `t0`.
fn secs(t: DateTime<Utc>, t0: DateTime<Utc>) -> f64 {
    (t - t0).num_milliseconds() as f64 / 1000.0
}

/// Where the rollback started and health was proven, as seconds into the window.
struct Marks {
    rollback: Option<f64>,
    healthy: Option<f64>,
}

fn chart(
    gate: &str,
    pts: &[Point],
    t0: DateTime<Utc>,
    t1: f64,
    marks: &Marks,
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let ymax = pts
            .iter()
            .flat_map(|p| [p.value, p.threshold])
            .flatten()
            .fold(1.0f64, f64::max)
            * 1.15;
        let mut c = ChartBuilder::on(&root)
            .caption(gate, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(34)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..t1.max(1.0), 0f64..ymax)
            .map_err(|e| anyhow!("{e}"))?;
        c.configure_mesh()
            .x_desc("seconds since the window started (UTC times in the summary)")
            .y_desc(pts.first().map(|p| p.unit.as_str()).unwrap_or(""))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let values: Vec<(f64, f64)> = pts
            .iter()
            .filter_map(|p| Some((secs(p.t, t0), p.value?)))
            .collect();
        c.draw_series(LineSeries::new(values, BLACK.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label("figure")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(2)));
        if let Some(th) = pts.iter().find_map(|p| p.threshold) {
            c.draw_series(DashedLineSeries::new(
                vec![(0.0, th), (t1.max(1.0), th)],
                6,
                4,
                THRESHOLD.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label("threshold")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], THRESHOLD));
        }
        let violations = pts.iter().filter(|p| p.status == "violated").map(|p| {
            Cross::new(
                (secs(p.t, t0), p.value.unwrap_or(0.0)),
                7,
                RED.stroke_width(3),
            )
        });
        c.draw_series(violations)
            .map_err(|e| anyhow!("{e}"))?
            .label("violation")
            .legend(|(x, y)| Cross::new((x + 8, y), 5, RED.stroke_width(3)));
        draw_marks(&mut c, marks, ymax)?;
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(with_roles(&svg))
}

const THRESHOLD: RGBColor = RGBColor(90, 90, 90);
const ROLLBACK: RGBColor = BLUE;
const HEALTHY: RGBColor = GREEN;

/// The legend's background, the one element drawn with opacity 0.8: what
/// follows it is the legend, whose samples share the roles' colours.
const LEGEND_BACKGROUND: &str = "opacity=\"0.8\"";

/// `svg` with `data-role="threshold|rollback|healthy"` on the lines that draw
/// those, so a browser test (or a reader's devtools) can find them in the
/// DOM. plotters' SVG backend takes no attributes, so they are recognised by
/// their colour, which only they use in the plot (the legend excepted); it
/// writes one element per line.
fn with_roles(svg: &str) -> String {
    let roles = [
        (THRESHOLD, "threshold"),
        (ROLLBACK, "rollback"),
        (HEALTHY, "healthy"),
    ]
    .map(|(RGBColor(r, g, b), role)| (format!("stroke=\"#{r:02X}{g:02X}{b:02X}\""), role));
    let mut out = String::with_capacity(svg.len() + 512);
    let mut in_legend = false;
    for line in svg.split_inclusive('\n') {
        in_legend |= line.starts_with("<rect") && line.contains(LEGEND_BACKGROUND);
        let role = roles
            .iter()
            .find(|(stroke, _)| line.contains(stroke.as_str()))
            .map(|(_, role)| *role);
        match (
            role,
            line.strip_prefix("<polyline ")
                .or_else(|| line.strip_prefix("<line ")),
        ) {
            (Some(role), Some(rest)) if !in_legend => {
                let tag = &line[..line.len() - rest.len()];
                out.push_str(&format!("{tag}data-role=\"{role}\" {rest}"));
            }
            _ => out.push_str(line),
        }
    }
    out
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The rollback and the return to health, as vertical lines across the chart.
fn draw_marks(c: &mut Chart<'_, '_>, marks: &Marks, ymax: f64) -> anyhow::Result<()> {
    for (at, label, colour) in [
        (marks.rollback, "rollback started", ROLLBACK),
        (marks.healthy, "healthy again", HEALTHY),
    ] {
        if let Some(x) = at {
            c.draw_series(LineSeries::new(
                vec![(x, 0.0), (x, ymax)],
                colour.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
        }
    }
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The page for the watch whose events are in `events_path`.
pub fn page(env: &str, release: Option<&str>, events_path: &Path) -> anyhow::Result<String> {
    let events = history::read_events(events_path)?;
    let per_gate = series(&events);
    let times = incident_times(&events);
    let t0 = events
        .iter()
        .find_map(WatchEvent::time)
        .ok_or_else(|| anyhow!("{} holds no events", events_path.display()))?;
    let t_end = events.iter().rev().find_map(WatchEvent::time).unwrap_or(t0);
    let marks = Marks {
        rollback: times.rollback_started.map(|t| secs(t, t0)),
        healthy: times.resolved.map(|t| secs(t, t0)),
    };
    let result = events
        .iter()
        .rev()
        .find(|e| e.event == "monitor.completed")
        .and_then(|e| e.str("result"))
        .unwrap_or("unknown");
    let mttr = match (times.detected, times.resolved) {
        (Some(a), Some(b)) => format!("{:.1} s", secs(b, a)),
        _ => "n/a".to_string(),
    };
    let mut body = format!(
        "<h1>Watch of {rel} on {env}</h1>\n<ul class=\"summary\">\n<li>Result: <b>{result}</b></li>\n\
         <li>Release: {rel}</li>\n<li>Window: {start} to {end} (UTC)</li>\n<li>Gate that tripped: {gate}</li>\n\
         <li>Detected: {det}</li>\n<li>Rollback started: {rb}</li>\n<li>Healthy again: {ok}</li>\n<li>MTTR: {mttr}</li>\n</ul>\n",
        rel = esc(release.unwrap_or("unknown")),
        env = esc(env),
        start = rfc3339(t0),
        end = rfc3339(t_end),
        gate = esc(times.gate.as_deref().unwrap_or("none")),
        det = times.detected.map(rfc3339).unwrap_or_else(|| "-".into()),
        rb = times.rollback_started.map(rfc3339).unwrap_or_else(|| "-".into()),
        ok = times.resolved.map(rfc3339).unwrap_or_else(|| "-".into()),
    );
    for (gate, pts) in &per_gate {
        let svg = chart(gate, pts, t0, secs(t_end, t0), &marks)
            .with_context(|| format!("drawing the chart of {gate}"))?;
        body.push_str(&format!(
            "<figure class=\"gate-chart\" data-gate=\"{}\">\n{svg}\n</figure>\n",
            esc(gate)
        ));
    }
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>dhash watch {}</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}} figure{{margin:1em 0}}</style></head>\
         <body>\n{body}</body></html>\n",
        esc(release.unwrap_or("unknown"))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_tag_the_plotted_lines_not_the_legend_samples() {
        let svg = "<svg>\n\
            <polyline fill=\"none\" opacity=\"1\" stroke=\"#5A5A5A\" stroke-width=\"2\" points=\"1,5 7,5 \"/>\n\
            <polyline fill=\"none\" opacity=\"1\" stroke=\"#0000FF\" stroke-width=\"2\" points=\"3,0 3,9 \"/>\n\
            <line opacity=\"1\" stroke=\"#00FF00\" stroke-width=\"2\" x1=\"4\" y1=\"0\" x2=\"4\" y2=\"9\"/>\n\
            <polyline fill=\"none\" opacity=\"1\" stroke=\"#000000\" stroke-width=\"2\" points=\"0,0 9,9 \"/>\n\
            <rect x=\"5\" y=\"5\" width=\"9\" height=\"9\" opacity=\"0.8\" fill=\"#FFFFFF\" stroke=\"none\"/>\n\
            <polyline fill=\"none\" opacity=\"1\" stroke=\"#0000FF\" stroke-width=\"2\" points=\"6,6 22,6 \"/>\n\
            </svg>\n";
        let out = with_roles(svg);
        for role in ["threshold", "rollback", "healthy"] {
            assert_eq!(
                out.matches(&format!("data-role=\"{role}\"")).count(),
                1,
                "{out}"
            );
        }
        assert!(out.contains("<line data-role=\"healthy\" opacity"), "{out}");
        let legend = &out[out.find("<rect").expect("the legend background")..];
        assert!(!legend.contains("data-role"), "legend untagged: {out}");
        assert_eq!(
            out.replace(" data-role=\"threshold\"", "")
                .replace(" data-role=\"rollback\"", "")
                .replace(" data-role=\"healthy\"", ""),
            svg
        );
    }
}
