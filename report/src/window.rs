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
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use crate::acks::{self, Ack, Acks};
use crate::figures::{incident_times, rfc3339};
use crate::history::{self, parse_ts, WatchEvent};
use crate::roles::Role;

/// One gate decision as charted.
#[derive(Debug, Clone)]
struct Point {
    t: DateTime<Utc>,
    value: Option<f64>,
    threshold: Option<f64>,
    status: String,
    unit: String,
    /// A baseline-relative gate's baseline figure (issue 16's decisions carry it).
    baseline: Option<f64>,
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
            baseline: e
                .fields
                .get("baseline")
                .and_then(|b| b.get("value"))
                .and_then(Value::as_f64),
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

/// What is drawn across every chart of the page, in seconds into the page's
/// time axis: the rollback and the return to health, the releases and the
/// cadence phases.
struct Marks {
    rollback: Option<f64>,
    healthy: Option<f64>,
    releases: Vec<Band>,
    phases: Vec<Band>,
}

/// A labelled stretch of the time axis.
#[derive(Debug, Clone, PartialEq)]
struct Band {
    from: f64,
    to: f64,
    label: String,
}

/// A stretch where a gate had no verdict, shaded on its chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shade {
    Pending,
    NoData,
    Error,
}

impl Shade {
    fn of(status: &str) -> Option<Shade> {
        match status {
            "pending" => Some(Shade::Pending),
            "no-data" => Some(Shade::NoData),
            "error" => Some(Shade::Error),
            _ => None,
        }
    }
    /// Light fills of distinct lightness (230, ~209, ~193 in greyscale),
    /// so the three stay apart when printed in black and white.
    fn colour(self) -> RGBColor {
        match self {
            Shade::Pending => RGBColor(230, 230, 230),
            Shade::NoData => RGBColor(200, 210, 230),
            Shade::Error => RGBColor(240, 180, 180),
        }
    }
    fn role(self) -> &'static str {
        match self {
            Shade::Pending => "pending",
            Shade::NoData => "no-data",
            Shade::Error => "error",
        }
    }
    const ALL: [Shade; 3] = [Shade::Pending, Shade::NoData, Shade::Error];
}

/// The gate's stretches without a verdict: from the sample that had the
/// status to the gate's next sample (the last one: to the rollback's start,
/// when the watch rolled back, which ended the sampling; else to the end of
/// the axis), runs merged.
fn shaded(
    pts: &[Point],
    t0: DateTime<Utc>,
    t1: f64,
    rollback: Option<f64>,
) -> Vec<(Shade, f64, f64)> {
    let mut out: Vec<(Shade, f64, f64)> = Vec::new();
    for (i, p) in pts.iter().enumerate() {
        let Some(shade) = Shade::of(&p.status) else {
            continue;
        };
        let from = secs(p.t, t0);
        let last = rollback.filter(|r| *r >= from).unwrap_or(t1);
        let to = pts.get(i + 1).map_or(last, |n| secs(n.t, t0));
        match out.last_mut() {
            Some(last) if last.0 == shade && last.2 >= from => last.2 = to,
            _ => out.push((shade, from, to)),
        }
    }
    out
}

/// The cadence phases of the window as `monitor.started` recorded them
/// (every 30 s for 5 min, then every 120 s, in production), clipped to the
/// axis `0..t1`.
fn phases(events: &[WatchEvent], t0: DateTime<Utc>, t1: f64) -> Vec<Band> {
    let Some(started) = events.iter().find(|e| e.event == "monitor.started") else {
        return Vec::new();
    };
    let start = started
        .str("window_start")
        .and_then(parse_ts)
        .map_or(0.0, |t| secs(t, t0));
    let cadence = started
        .fields
        .get("cadence")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut from = start;
    let mut out = Vec::new();
    for phase in cadence {
        let Some(every) = phase.get("every_secs").and_then(Value::as_f64) else {
            continue;
        };
        let to = phase
            .get("for_secs")
            .and_then(Value::as_f64)
            .map_or(t1, |len| from + len);
        if from < t1 && to > from {
            out.push(Band {
                from: from.max(0.0),
                to: to.min(t1),
                label: format!("every {} s", trim_float(every)),
            });
        }
        from = to;
    }
    out
}

/// The release watched, and the release the rollback restored (from its
/// completion on).
fn releases(events: &[WatchEvent], release: Option<&str>, t0: DateTime<Utc>, t1: f64) -> Vec<Band> {
    let restored = events
        .iter()
        .find(|e| e.event == "rollback.completed")
        .and_then(|e| Some((secs(e.time()?, t0), e.str("release")?.to_string())));
    let watched = release
        .map(str::to_string)
        .or_else(|| {
            let started = events.iter().find(|e| e.event == "monitor.started")?;
            started.str("release").map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string());
    let until = restored.as_ref().map_or(t1, |(t, _)| *t);
    let mut out = vec![Band {
        from: 0.0,
        to: until,
        label: format!("release {watched}"),
    }];
    if let Some((from, id)) = restored {
        out.push(Band {
            from,
            to: t1.max(from),
            label: format!("restored {id}"),
        });
    }
    out
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

const THRESHOLD: RGBColor = RGBColor(90, 90, 90);
/// Shaded stretches let the grid show through (not 0.8: that opacity marks
/// the legend, see [`crate::roles::LEGEND_BACKGROUND`]).
const SHADE_OPACITY: f64 = 0.7;
const ROLLBACK: RGBColor = BLUE;
const BASELINE: RGBColor = RGBColor(120, 80, 0);
const HEALTHY: RGBColor = GREEN;
/// The two tones the phase and release bands alternate (dark enough to
/// tell from the shaded stretches, light enough for black labels).
const PHASE_TONES: [RGBColor; 2] = [RGBColor(216, 208, 184), RGBColor(184, 176, 152)];
const RELEASE_TONES: [RGBColor; 2] = [RGBColor(192, 216, 192), RGBColor(150, 180, 150)];

/// Every role a window chart tags, see [`crate::roles`].
fn roles() -> Vec<Role> {
    let mut r = vec![
        Role::stroke(THRESHOLD, "threshold"),
        Role::stroke(ROLLBACK, "rollback"),
        Role::stroke(HEALTHY, "healthy"),
        Role::stroke(BASELINE, "baseline"),
    ];
    r.extend(Shade::ALL.map(|s| Role::fill(s.colour(), s.role())));
    r.extend(PHASE_TONES.map(|c| Role::fill(c, "phase")));
    r.extend(RELEASE_TONES.map(|c| Role::fill(c, "release")));
    r
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The chart's vertical layout: the data below `top`, then the phase row,
/// then the release row.
#[derive(Clone, Copy)]
struct Rows {
    top: f64,
    row: f64,
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
        let root = SVGBackend::with_string(&mut svg, (760, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let top = pts
            .iter()
            .flat_map(|p| [p.value, p.threshold, p.baseline])
            .flatten()
            .fold(1.0f64, f64::max)
            * 1.15;
        let rows = Rows {
            top,
            row: top * 0.1,
        };
        let x1 = t1.max(1.0);
        let mut c = ChartBuilder::on(&root)
            .caption(gate, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(34)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x1, 0f64..top + 2.0 * rows.row)
            .map_err(|e| anyhow!("{e}"))?;
        c.configure_mesh()
            .x_desc("seconds since the window started (UTC times in the summary)")
            .y_desc(pts.first().map(|p| p.unit.as_str()).unwrap_or(""))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        draw_shades(&mut c, &shaded(pts, t0, x1, marks.rollback), rows)?;
        draw_bands(&mut c, x1, &marks.phases, &PHASE_TONES, rows.top, rows.row)?;
        draw_bands(
            &mut c,
            x1,
            &marks.releases,
            &RELEASE_TONES,
            rows.top + rows.row,
            rows.row,
        )?;
        draw_figure(&mut c, pts, t0, x1)?;
        draw_marks(&mut c, marks, rows.top)?;
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(crate::roles::tag(&svg, &roles()))
}

/// The figure, its threshold and each violation.
fn draw_figure(
    c: &mut Chart<'_, '_>,
    pts: &[Point],
    t0: DateTime<Utc>,
    x1: f64,
) -> anyhow::Result<()> {
    let values: Vec<(f64, f64)> = pts
        .iter()
        .filter_map(|p| Some((secs(p.t, t0), p.value?)))
        .collect();
    // A dot per sample: a watch rolled back on its first sample has a figure of one point.
    c.draw_series(values.iter().map(|p| Circle::new(*p, 3, BLACK.filled())))
        .map_err(|e| anyhow!("{e}"))?;
    c.draw_series(LineSeries::new(values, BLACK.stroke_width(2)))
        .map_err(|e| anyhow!("{e}"))?
        .label("figure")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(2)));
    if let Some(th) = pts.iter().find_map(|p| p.threshold) {
        c.draw_series(DashedLineSeries::new(
            vec![(0.0, th), (x1, th)],
            6,
            4,
            THRESHOLD.stroke_width(2),
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label("threshold")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], THRESHOLD));
    }
    let baseline: Vec<(f64, f64)> = pts
        .iter()
        .filter_map(|p| Some((secs(p.t, t0), p.baseline?)))
        .collect();
    if !baseline.is_empty() {
        // Short dashes, unlike the threshold's long ones, so the two differ in greyscale too.
        c.draw_series(DashedLineSeries::new(
            baseline,
            2,
            3,
            BASELINE.stroke_width(2),
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label("baseline")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BASELINE));
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
    Ok(())
}

/// The stretches without a verdict, behind the figure; one legend entry
/// per kind that occurs.
fn draw_shades(
    c: &mut Chart<'_, '_>,
    stretches: &[(Shade, f64, f64)],
    rows: Rows,
) -> anyhow::Result<()> {
    for kind in Shade::ALL {
        let rects: Vec<Rectangle<(f64, f64)>> = stretches
            .iter()
            .filter(|(s, ..)| *s == kind)
            .map(|(_, a, b)| {
                Rectangle::new(
                    [(*a, 0.0), (*b, rows.top)],
                    kind.colour().mix(SHADE_OPACITY).filled(),
                )
            })
            .collect();
        if rects.is_empty() {
            continue;
        }
        let colour = kind.colour();
        c.draw_series(rects)
            .map_err(|e| anyhow!("{e}"))?
            .label(kind.role())
            .legend(move |(x, y)| {
                Rectangle::new(
                    [(x, y - 5), (x + 16, y + 5)],
                    colour.mix(SHADE_OPACITY).filled(),
                )
            });
    }
    Ok(())
}

/// A row of labelled bands from `y` to `y + h`, alternating `tones`.
fn draw_bands(
    c: &mut Chart<'_, '_>,
    x1: f64,
    bands: &[Band],
    tones: &[RGBColor; 2],
    y: f64,
    h: f64,
) -> anyhow::Result<()> {
    for (i, b) in bands.iter().enumerate() {
        c.draw_series(std::iter::once(Rectangle::new(
            [(b.from, y), (b.to, y + h)],
            tones[i % 2].filled(),
        )))
        .map_err(|e| anyhow!("{e}"))?;
        // A short band near the end (the restored release) is labelled
        // leftwards from its end, so the label stays on the chart.
        let (x, anchor) = match b.to - b.from < x1 * 0.3 && b.to >= x1 * 0.7 {
            true => (b.to, HPos::Right),
            false => (b.from, HPos::Left),
        };
        let style = ("sans-serif", 12)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(anchor, VPos::Top));
        c.draw_series(std::iter::once(Text::new(
            b.label.clone(),
            (x, y + h * 0.9),
            style,
        )))
        .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}

/// The rollback and the return to health, as vertical lines across the data.
fn draw_marks(c: &mut Chart<'_, '_>, marks: &Marks, top: f64) -> anyhow::Result<()> {
    for (at, label, colour) in [
        (marks.rollback, "rollback started", ROLLBACK),
        (marks.healthy, "healthy again", HEALTHY),
    ] {
        if let Some(x) = at {
            c.draw_series(LineSeries::new(
                vec![(x, 0.0), (x, top)],
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

/// Escapes text for element content and for double- or single-quoted
/// attribute values (gate names and releases come from files anyone can write).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The page for the watch whose events are in `events_path` (as the
/// monitor writes it when the watch ends: before anyone could acknowledge).
pub fn page(env: &str, release: Option<&str>, events_path: &Path) -> anyhow::Result<String> {
    page_acked(env, release, events_path, None)
}

/// The acknowledgement of the incident the watch at `events_path` ended in,
/// from the ledger: the incident record whose detection time is the watch's.
pub fn acknowledgement(env: &EnvConfig, events_path: &Path) -> anyhow::Result<Option<Ack>> {
    let events = history::read_events(events_path)?;
    let Some(detected) = incident_times(&events).detected.map(rfc3339) else {
        return Ok(None);
    };
    let records = history::read_ledger(&env.ledger_path())?;
    let acks = Acks::from_records(&records, chrono::Utc::now());
    Ok(history::incident_records(&env.log_dir, &env.name)
        .iter()
        .find(|(_, d)| d.as_deref() == Some(detected.as_str()))
        .and_then(|(p, _)| acks::incident_id(p))
        .and_then(|id| acks.ack(&id).cloned()))
}

/// [`page`], with who acknowledged the incident and when in the summary
/// (`report_dhash window` looks it up in the ledger).
pub fn page_acked(
    env: &str,
    release: Option<&str>,
    events_path: &Path,
    ack: Option<&Ack>,
) -> anyhow::Result<String> {
    let events = history::read_events(events_path)?;
    let per_gate = series(&events);
    let times = incident_times(&events);
    let t0 = events
        .iter()
        .find_map(WatchEvent::time)
        .ok_or_else(|| anyhow!("{} holds no events", events_path.display()))?;
    let t_end = events.iter().rev().find_map(WatchEvent::time).unwrap_or(t0);
    let t1 = secs(t_end, t0);
    let marks = Marks {
        rollback: times.rollback_started.map(|t| secs(t, t0)),
        healthy: times.resolved.map(|t| secs(t, t0)),
        releases: releases(&events, release, t0, t1),
        phases: phases(&events, t0, t1),
    };
    let result = events
        .iter()
        .rev()
        .find(|e| e.event == "monitor.completed")
        .and_then(|e| e.str("result"))
        .map_or_else(|| "unknown".to_string(), esc);
    let mttr = crate::mttr_of(&times)
        .map(|s| format!("{s:.1} s"))
        .unwrap_or_else(|| "n/a".to_string());
    let mut body = format!(
        "<h1>Watch of {rel} on {env}</h1>\n<ul class=\"summary\">\n<li>Result: <b>{result}</b></li>\n\
         <li>Release: {rel}</li>\n<li>Window: {start} to {end} (UTC)</li>\n<li>Gate that tripped: {gate}</li>\n\
         <li>Detected: {det}</li>\n<li>Rollback started: {rb}</li>\n<li>Healthy again: {ok}</li>\n<li>MTTR: {mttr}</li>\n<li>Acknowledged: {acked}</li>\n</ul>\n",
        rel = esc(release.unwrap_or("unknown")),
        env = esc(env),
        start = rfc3339(t0),
        end = rfc3339(t_end),
        gate = esc(times.gate.as_deref().unwrap_or("none")),
        det = times.detected.map(rfc3339).unwrap_or_else(|| "-".into()),
        rb = times.rollback_started.map(rfc3339).unwrap_or_else(|| "-".into()),
        ok = times.resolved.map(rfc3339).unwrap_or_else(|| "-".into()),
        acked = match (ack, times.rollback_started) {
            (_, None) => "-".to_string(),
            (a, Some(_)) => esc(&acks::describe(a)),
        },
    );
    for (gate, pts) in &per_gate {
        let svg = chart(gate, pts, t0, t1, &marks)
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

    fn ev(line: &str) -> WatchEvent {
        serde_json::from_str(line).expect("event")
    }

    fn at(s: &str) -> DateTime<Utc> {
        parse_ts(s).expect("time")
    }

    fn point(t: &str, status: &str) -> Point {
        Point {
            t: at(t),
            value: None,
            threshold: None,
            status: status.to_string(),
            unit: String::new(),
            baseline: None,
        }
    }

    #[test]
    fn stretches_without_a_verdict_run_to_the_next_sample() {
        let t0 = at("2026-01-01T00:00:00Z");
        let pts = [
            point("2026-01-01T00:00:01Z", "pending"),
            point("2026-01-01T00:00:02Z", "pending"),
            point("2026-01-01T00:00:03Z", "ok"),
            point("2026-01-01T00:00:04Z", "no-data"),
            point("2026-01-01T00:00:05Z", "error"),
        ];
        assert_eq!(
            shaded(&pts, t0, 9.0, None),
            vec![
                (Shade::Pending, 1.0, 3.0),
                (Shade::NoData, 4.0, 5.0),
                (Shade::Error, 5.0, 9.0)
            ]
        );
        assert_eq!(
            shaded(&pts[3..], t0, 9.0, Some(6.5)).last(),
            Some(&(Shade::Error, 5.0, 6.5)),
            "sampling ended when the rollback started"
        );
    }

    #[test]
    fn a_baseline_gate_draws_its_baseline() {
        let dir = std::env::temp_dir().join(format!("dhash-report-window-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("events.jsonl");
        let decision = |ts: &str, value: f64, base: f64| {
            format!(
                r#"{{"ts":"{ts}","event":"gate.ok","gate":"p95_hash_time","status":"ok","value":{value},"threshold":1.5,"limit":{},"unit":"ms","sample_ts":"{ts}","baseline":{{"state":"ready","value":{base}}}}}"#,
                base * 1.5
            )
        };
        let lines = [
            decision("2026-01-01T00:00:01.000Z", 100.0, 90.0),
            decision("2026-01-01T00:00:02.000Z", 120.0, 90.0),
        ];
        std::fs::write(&path, lines.join("\n") + "\n").expect("events");
        let html = page("staging", Some("r1"), &path).expect("page");
        std::fs::remove_dir_all(&dir).ok();
        assert!(html.contains("data-role=\"baseline\""), "{html}");
        assert!(
            html.contains(">\nbaseline\n</text>"),
            "in the legend: {html}"
        );
    }

    #[test]
    fn phases_follow_the_recorded_cadence_clipped_to_the_axis() {
        let started = ev(
            r#"{"ts":"2026-01-01T00:00:00.000Z","event":"monitor.started","window_start":"2026-01-01T00:00:00.500Z","cadence":[{"every_secs":30.0,"for_secs":300.0},{"every_secs":120.0,"for_secs":null}]}"#,
        );
        let t0 = at("2026-01-01T00:00:00Z");
        let band = |from: f64, to: f64, label: &str| Band {
            from,
            to,
            label: label.to_string(),
        };
        assert_eq!(
            phases(std::slice::from_ref(&started), t0, 3600.0),
            vec![
                band(0.5, 300.5, "every 30 s"),
                band(300.5, 3600.0, "every 120 s")
            ]
        );
        assert_eq!(
            phases(&[started], t0, 100.0),
            vec![band(0.5, 100.0, "every 30 s")],
            "a window cut short by a rollback"
        );
    }
}
