//! `report_dhash --html PATH`: the period's figures as one self-contained
//! HTML page (no network, opens from disk) with plotters SVG charts:
//! deployments and rollbacks per week, MTTR per incident, and each gate's
//! worst figure per watched release (seed 003's "performance trend
//! analysis"). Times are UTC; the fills differ in lightness, so the charts
//! read in greyscale.

use std::collections::BTreeMap;

use anyhow::anyhow;
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde_json::Value;

use crate::figures::Report;
use crate::history::{self, parse_ts};
use crate::roles::Role;

const DEPLOYS: RGBColor = RGBColor(200, 200, 200);
const ROLLBACKS: RGBColor = RGBColor(60, 60, 60);
const MTTR: RGBColor = RGBColor(110, 110, 110);
const THRESHOLD: RGBColor = RGBColor(90, 90, 90);

fn roles() -> [Role; 4] {
    [
        Role::fill(DEPLOYS, "deployments"),
        Role::fill(ROLLBACKS, "rollbacks"),
        Role::fill(MTTR, "mttr"),
        Role::stroke(THRESHOLD, "threshold"),
    ]
}

/// The Monday (UTC) of the week `t` falls in.
fn week_of(t: DateTime<Utc>) -> NaiveDate {
    let d = t.date_naive();
    d - Duration::days(i64::from(d.weekday().num_days_from_monday()))
}

/// Deployments and rollbacks per week of the period: (Monday, deployments, rollbacks).
pub fn per_week(report: &Report) -> Vec<(NaiveDate, f64, f64)> {
    let (Some(since), Some(until)) = (parse_ts(&report.since), parse_ts(&report.until)) else {
        return Vec::new();
    };
    let mut weeks: BTreeMap<NaiveDate, (f64, f64)> = BTreeMap::new();
    let mut w = week_of(since);
    while w <= week_of(until) {
        weeks.insert(w, (0.0, 0.0));
        w += Duration::days(7);
    }
    for t in report.deploys.iter().filter_map(|d| parse_ts(&d.ts)) {
        weeks.entry(week_of(t)).or_default().0 += 1.0;
    }
    for t in report.rollbacks.iter().filter_map(|r| parse_ts(&r.ts)) {
        weeks.entry(week_of(t)).or_default().1 += 1.0;
    }
    weeks.into_iter().map(|(w, (d, r))| (w, d, r)).collect()
}

/// One gate's worst figure in each watch of the period, in watch order.
#[derive(Debug, Default, PartialEq)]
pub struct Trend {
    pub unit: String,
    pub threshold: Option<f64>,
    /// (release, the highest value the gate decided on in its watch)
    pub points: Vec<(String, f64)>,
}

/// Each gate's trend, from the watches' events files (a watch whose file
/// is gone is left out: the ledger is the record, the events are a log).
pub fn trends(report: &Report) -> BTreeMap<String, Trend> {
    let mut out: BTreeMap<String, Trend> = BTreeMap::new();
    for w in &report.watches {
        let Some(evs) = w
            .events
            .as_deref()
            .and_then(|p| history::read_events(p).ok())
        else {
            continue;
        };
        let release = w.release.clone().unwrap_or_else(|| "unknown".into());
        let mut worst: BTreeMap<String, f64> = BTreeMap::new();
        for e in evs.iter().filter(|e| e.event.starts_with("gate.")) {
            let (Some(gate), Some(v)) =
                (e.str("gate"), e.fields.get("value").and_then(Value::as_f64))
            else {
                continue;
            };
            let t = out.entry(gate.to_string()).or_default();
            t.unit = e.str("unit").unwrap_or_default().to_string();
            t.threshold = e
                .fields
                .get("threshold")
                .and_then(Value::as_f64)
                .or(t.threshold);
            let m = worst.entry(gate.to_string()).or_insert(v);
            *m = m.max(v);
        }
        for (gate, v) in worst {
            out.entry(gate)
                .or_default()
                .points
                .push((release.clone(), v));
        }
    }
    out
}

/// Where category `i` of `n` ends on a segmented axis over `0..n - 1`
/// (the last one ends at the axis' end, past its last exact value).
fn segment_end(i: usize, n: usize) -> SegmentValue<usize> {
    match i + 1 >= n {
        true => SegmentValue::Last,
        false => SegmentValue::Exact(i + 1),
    }
}

type Bars<'a> = (&'a str, RGBColor, u32, Vec<f64>);

/// Bars over categories: each series a bar per category, drawn in order
/// (later series narrower, in front), so "deployments, of which rolled
/// back" reads as one bar inside another.
fn bar_chart(
    title: &str,
    labels: &[String],
    series: &[Bars<'_>],
    x_desc: &str,
    y_desc: &str,
) -> anyhow::Result<String> {
    let n = labels.len().max(1);
    let top = series
        .iter()
        .flat_map(|s| s.3.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 280)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..top)
            .map_err(|e| anyhow!("{e}"))?;
        let label = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(n.min(20))
            .x_label_formatter(&label)
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (name, colour, margin, values) in series {
            let colour = *colour;
            // A bar is a rectangle over its category's segment, narrowed
            // by `margin` pixels each side.
            let bars = values.iter().enumerate().map(|(i, v)| {
                let mut r = Rectangle::new(
                    [(SegmentValue::Exact(i), 0.0), (segment_end(i, n), *v)],
                    colour.filled(),
                );
                r.set_margin(0, 0, *margin, *margin);
                r
            });
            c.draw_series(bars)
                .map_err(|e| anyhow!("{e}"))?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 16, y + 5)], colour.filled())
                });
        }
        // Upper left: the latest weeks, on the right, are the ones with bars.
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(crate::roles::tag(&svg, &roles()))
}

/// A gate's worst figure per release, with its threshold.
fn trend_chart(gate: &str, t: &Trend) -> anyhow::Result<String> {
    let n = t.points.len().max(1);
    let top = t
        .points
        .iter()
        .map(|p| p.1)
        .chain(t.threshold)
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut c = ChartBuilder::on(&root)
            .caption(
                format!("{gate}: worst figure per watch"),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..top)
            .map_err(|e| anyhow!("{e}"))?;
        let label = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => t.points.get(*i).map(|p| p.0.clone()).unwrap_or_default(),
            _ => String::new(),
        };
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(n.min(20))
            .x_label_formatter(&label)
            .x_desc("release, in the order watched")
            .y_desc(t.unit.as_str())
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let pts: Vec<(SegmentValue<usize>, f64)> = t
            .points
            .iter()
            .enumerate()
            .map(|(i, p)| (SegmentValue::CenterOf(i), p.1))
            .collect();
        c.draw_series(
            pts.iter()
                .map(|p| Circle::new(p.clone(), 4, BLACK.filled())),
        )
        .map_err(|e| anyhow!("{e}"))?;
        c.draw_series(LineSeries::new(pts, BLACK.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label("worst figure in the watch")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(2)));
        if let Some(th) = t.threshold {
            c.draw_series(DashedLineSeries::new(
                vec![(SegmentValue::Exact(0), th), (SegmentValue::Last, th)],
                6,
                4,
                THRESHOLD.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label("threshold")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], THRESHOLD));
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(crate::roles::tag(&svg, &roles()))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn figure_html(chart: &str, extra: &str, caption: &str, svg: &str) -> String {
    format!(
        "<figure class=\"history-chart\" data-chart=\"{chart}\"{extra}>\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
        esc(caption)
    )
}

/// The figures as an HTML table (the same rows as the terminal table).
fn figures_table(report: &Report) -> String {
    let mut rows = String::new();
    for f in &report.figures {
        let labels: Vec<String> = f.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let value = match (f.value, &f.why) {
            (Some(v), _) => format!("{}", (v * 1000.0).round() / 1000.0),
            (None, why) => format!("n/a ({})", why.as_deref().unwrap_or("cannot be derived")),
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(f.name),
            esc(&labels.join(", ")),
            esc(&value),
            esc(f.unit)
        ));
    }
    format!(
        "<table class=\"figures\">\n<tr><th>figure</th><th>labels</th><th>value</th><th>unit</th></tr>\n{rows}</table>\n"
    )
}

/// Every incident of the period: when, what tripped, MTTR, and who
/// acknowledged it and when (issue 19).
fn incidents_table(report: &Report) -> String {
    let mut rows = String::new();
    for i in &report.incidents {
        let mttr = i
            .mttr_seconds
            .map(|m| format!("{m:.1} s"))
            .unwrap_or_else(|| "n/a".into());
        let ack = match (&i.acknowledged_by, &i.acknowledged_at) {
            (Some(by), at) => format!("{by} at {}", at.as_deref().unwrap_or("?")),
            (None, _) => "not acknowledged".to_string(),
        };
        let level = i
            .escalation_level
            .map(|l| l.to_string())
            .unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"ack\">{}</td><td>{}</td></tr>\n",
            esc(i.detected.as_deref().unwrap_or("-")),
            esc(i.release.as_deref().unwrap_or("-")),
            esc(i.gate.as_deref().unwrap_or("-")),
            esc(&mttr),
            esc(&ack),
            esc(&level)
        ));
    }
    format!(
        "<h2>Incidents</h2>\n<table class=\"incidents\">\n<tr><th>detected (UTC)</th><th>release</th>\
         <th>gate</th><th>MTTR</th><th>acknowledged</th><th>escalation level</th></tr>\n{rows}</table>\n"
    )
}

/// The history page of `report`.
pub fn history_page(report: &Report) -> anyhow::Result<String> {
    let weeks = per_week(report);
    let week_labels: Vec<String> = weeks
        .iter()
        .map(|w| w.0.format("%Y-%m-%d").to_string())
        .collect();
    let mut body = format!(
        "<h1>dhash on {env}</h1>\n<p>From {since} to {until} (UTC).</p>\n",
        env = esc(&report.env),
        since = esc(&report.since),
        until = esc(&report.until)
    );
    let svg = bar_chart(
        "Deployments and rollbacks per week",
        &week_labels,
        &[
            (
                "deployments",
                DEPLOYS,
                4,
                weeks.iter().map(|w| w.1).collect(),
            ),
            (
                "rollbacks",
                ROLLBACKS,
                16,
                weeks.iter().map(|w| w.2).collect(),
            ),
        ],
        "week starting (Monday, UTC)",
        "count",
    )?;
    body.push_str(&figure_html(
        "deploys-per-week",
        "",
        "Deployments (light) and rollbacks (dark) per week",
        &svg,
    ));
    let measured: Vec<(String, f64)> = report
        .incidents
        .iter()
        .filter_map(|i| {
            let when = i.detected.as_deref().and_then(parse_ts)?;
            Some((when.format("%m-%d %H:%M").to_string(), i.mttr_seconds?))
        })
        .collect();
    let svg = bar_chart(
        "MTTR per incident",
        &measured.iter().map(|m| m.0.clone()).collect::<Vec<_>>(),
        &[("MTTR", MTTR, 8, measured.iter().map(|m| m.1).collect())],
        "incident, by detection time (UTC)",
        "seconds",
    )?;
    body.push_str(&figure_html(
        "mttr-per-incident",
        "",
        "From the violating sample to the third OK health check after the restore",
        &svg,
    ));
    for (gate, t) in trends(report) {
        let svg = trend_chart(&gate, &t)?;
        let extra = format!(" data-gate=\"{}\"", esc(&gate));
        body.push_str(&figure_html(
            "gate-trend",
            &extra,
            &format!("{gate}, worst figure per watch"),
            &svg,
        ));
    }
    body.push_str(&incidents_table(report));
    body.push_str(&figures_table(report));
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>dhash report {}</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}} figure{{margin:1em 0}} \
         table{{border-collapse:collapse}} td,th{{border:1px solid #999;padding:2px 6px;text-align:left}}</style></head>\
         <body>\n{body}</body></html>\n",
        esc(&report.env)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_on_monday_utc() {
        let t = parse_ts("2026-12-02T07:00:00Z").expect("a Wednesday");
        assert_eq!(week_of(t).to_string(), "2026-11-30");
        let sunday = parse_ts("2026-12-06T23:59:59Z").expect("a Sunday");
        assert_eq!(week_of(sunday).to_string(), "2026-11-30");
    }
}
