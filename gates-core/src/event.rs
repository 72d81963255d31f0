//! The event contract (README "Events (stdout, JSON lines)"): one JSON
//! object per line on stdout, with the envelope `{ts, tool, env, event,
//! level, msg}` plus event-specific fields.
//! Human progress goes to stderr. Upstream events read on stdin are forwarded
//! unchanged, so the last stage of a pipeline sees everything.

use std::io::{self, BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::redact;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    Info,
    Warning,
    Critical,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Critical => "critical",
            Level::Error => "error",
        }
    }

    /// Severity order for routing: error sits with critical (both page).
    pub fn severity(self) -> u8 {
        match self {
            Level::Debug => 0,
            Level::Info => 1,
            Level::Warning => 2,
            Level::Critical | Level::Error => 3,
        }
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "debug" => Ok(Level::Debug),
            "info" => Ok(Level::Info),
            "warning" | "warn" => Ok(Level::Warning),
            "critical" => Ok(Level::Critical),
            "error" => Ok(Level::Error),
            other => Err(format!(
                "unknown level {other:?}: expected debug, info, warning, critical or error"
            )),
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event. Unknown fields are kept in `fields`, so consumers tolerate and
/// forward what they do not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts: String,
    pub tool: String,
    pub env: String,
    pub event: String,
    pub level: Level,
    pub msg: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Event {
    pub fn new(tool: &str, env: &str, event: &str, level: Level, msg: impl Into<String>) -> Self {
        Event {
            ts: now_rfc3339(),
            tool: tool.to_string(),
            env: env.to_string(),
            event: event.to_string(),
            level,
            msg: msg.into(),
            fields: Map::new(),
        }
    }

    /// Adds the fields of a JSON object; a non-object is stored as `data`.
    pub fn with(mut self, fields: Value) -> Self {
        match fields {
            Value::Object(m) => self.fields.extend(m),
            Value::Null => {}
            other => {
                self.fields.insert("data".into(), other);
            }
        }
        self
    }

    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T09:00:00.123Z`.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Writes events to stdout (one flushed line each) and a human echo to stderr.
/// A closed stdout (`| head`) stops output quietly; the tool's work goes on and
/// its exit code is unaffected.
pub struct Emitter {
    tool: String,
    env: Mutex<String>,
    verbose: bool,
    stdout_closed: AtomicBool,
    out: Mutex<Box<dyn Write + Send>>,
    echo: bool,
}

impl Emitter {
    /// Events to the process's stdout, human echo on stderr.
    pub fn stdout(tool: &str, env: &str, verbose: bool) -> Self {
        Emitter {
            tool: tool.to_string(),
            env: Mutex::new(env.to_string()),
            verbose,
            stdout_closed: AtomicBool::new(false),
            out: Mutex::new(Box::new(io::stdout())),
            echo: true,
        }
    }

    /// Events to any writer and no stderr echo (tests, libraries embedding a tool).
    pub fn to_writer(tool: &str, env: &str, out: Box<dyn Write + Send>) -> Self {
        Emitter {
            tool: tool.to_string(),
            env: Mutex::new(env.to_string()),
            verbose: false,
            stdout_closed: AtomicBool::new(false),
            out: Mutex::new(out),
            echo: false,
        }
    }

    /// Events nowhere (a library call whose caller reports on its own).
    pub fn sink(tool: &str, env: &str) -> Self {
        Self::to_writer(tool, env, Box::new(io::sink()))
    }

    pub fn tool(&self) -> &str {
        &self.tool
    }

    pub fn env(&self) -> String {
        self.env.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn set_env(&self, env: &str) {
        if let Ok(mut e) = self.env.lock() {
            *e = env.to_string();
        }
    }

    pub fn verbose(&self) -> bool {
        self.verbose
    }

    /// Builds, writes and returns an event.
    pub fn emit(&self, event: &str, level: Level, msg: impl Into<String>, fields: Value) -> Event {
        let ev = Event::new(&self.tool, &self.env(), event, level, msg).with(fields);
        self.write_event(&ev);
        ev
    }

    pub fn info(&self, event: &str, msg: impl Into<String>, fields: Value) -> Event {
        self.emit(event, Level::Info, msg, fields)
    }

    /// Writes an event built elsewhere (its tool/env are kept as they are).
    pub fn write_event(&self, ev: &Event) {
        let line = match serde_json::to_string(ev) {
            Ok(l) => l,
            Err(e) => {
                self.human(&format!("cannot encode event {}: {e}", ev.event));
                return;
            }
        };
        self.write_line(&line);
        if self.echo && (ev.level != Level::Debug || self.verbose) {
            self.human(&format!("[{}] {}: {}", ev.level, ev.event, ev.msg));
        }
    }

    /// Forwards an upstream line unchanged (but redacted).
    pub fn forward(&self, raw: &str) {
        self.write_line(raw.trim_end_matches(['\r', '\n']));
    }

    fn write_line(&self, line: &str) {
        if self.stdout_closed.load(Ordering::Relaxed) {
            return;
        }
        // Most lines hold no secret: no copy of them (a 10 MB event is one line).
        let line = redact::global().redact_cow(line);
        let Ok(mut out) = self.out.lock() else { return };
        let result = out
            .write_all(line.as_bytes())
            .and_then(|_| out.write_all(b"\n"))
            .and_then(|_| out.flush());
        if let Err(e) = result {
            // A closed pipe is a normal end for a producer; anything else is
            // worth one line on stderr, then we stop trying.
            if e.kind() != io::ErrorKind::BrokenPipe {
                eprintln!("{}: stdout: {e}; further events are dropped", self.tool);
            }
            self.stdout_closed.store(true, Ordering::Relaxed);
        }
    }

    /// A human line on stderr (redacted), prefixed with the tool name.
    pub fn human(&self, msg: &str) {
        let line = redact::global().redact(msg);
        let _ = writeln!(io::stderr(), "{}: {}", self.tool, line);
    }

    /// A human line on stderr only with `--verbose`.
    pub fn debug(&self, msg: &str) {
        if self.verbose {
            self.human(msg);
        }
    }
}

/// One line read from an upstream tool.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// A well-formed event; `raw` is the line as read, forwarded unchanged.
    Event {
        line_no: usize,
        raw: String,
        event: Box<Event>,
    },
    /// A JSON object that lacks the envelope (a custom jq stage, say): still
    /// forwarded, never acted on.
    Other {
        line_no: usize,
        raw: String,
        value: Value,
    },
    /// Not a JSON object: reported on stderr by number, not forwarded.
    Malformed {
        line_no: usize,
        raw: String,
        error: String,
    },
}

/// Reads upstream lines from stdin when stdin is not a terminal.
/// Returns `None` when stdin is a terminal (nothing is piped in).
pub fn stdin_lines() -> Option<impl Iterator<Item = Upstream>> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return None;
    }
    Some(read_upstream(stdin.lock()))
}

/// Parses upstream lines from any reader (testable without a process).
pub fn read_upstream<R: BufRead>(reader: R) -> impl Iterator<Item = Upstream> {
    let mut line_no = 0usize;
    let mut lines = reader.split(b'\n');
    std::iter::from_fn(move || loop {
        let bytes = match lines.next()? {
            Ok(b) => b,
            Err(e) => {
                line_no += 1;
                return Some(Upstream::Malformed {
                    line_no,
                    raw: String::new(),
                    error: format!("read error: {e}"),
                });
            }
        };
        line_no += 1;
        let raw = String::from_utf8_lossy(&bytes)
            .trim_end_matches('\r')
            .to_string();
        if raw.trim().is_empty() {
            continue;
        }
        return Some(parse_line(line_no, raw));
    })
}

fn parse_line(line_no: usize, raw: String) -> Upstream {
    match serde_json::from_str::<Value>(&raw) {
        Ok(Value::Object(map)) => {
            let value = Value::Object(map);
            // Deserialised from a borrow: a large event is not copied twice.
            match Event::deserialize(&value) {
                Ok(event) => Upstream::Event {
                    line_no,
                    raw,
                    event: Box::new(event),
                },
                Err(_) => Upstream::Other {
                    line_no,
                    raw,
                    value,
                },
            }
        }
        Ok(other) => Upstream::Malformed {
            line_no,
            raw,
            error: format!("expected a JSON object, found {}", json_kind(&other)),
        },
        Err(e) => Upstream::Malformed {
            line_no,
            raw,
            error: e.to_string(),
        },
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Forwards every upstream line through `emitter`, reports malformed ones on
/// stderr, and hands well-formed events to `on_event`. Returns the number of
/// malformed lines.
pub fn pump_stdin(emitter: &Emitter, mut on_event: impl FnMut(&Event)) -> usize {
    let Some(lines) = stdin_lines() else { return 0 };
    pump(emitter, lines, &mut on_event)
}

pub fn pump(
    emitter: &Emitter,
    lines: impl Iterator<Item = Upstream>,
    on_event: &mut dyn FnMut(&Event),
) -> usize {
    let mut malformed = 0;
    for up in lines {
        match up {
            Upstream::Event { raw, event, .. } => {
                emitter.forward(&raw);
                on_event(&event);
            }
            Upstream::Other { raw, .. } => emitter.forward(&raw),
            Upstream::Malformed { line_no, error, .. } => {
                malformed += 1;
                emitter.human(&format!(
                    "stdin line {line_no}: not a JSON event ({error}); ignored"
                ));
            }
        }
    }
    malformed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn envelope_fields_and_extras_round_trip() {
        let buf = Buf::default();
        let em = Emitter::to_writer("backup_dhash", "production", Box::new(buf.clone()));
        em.emit(
            "backup.verified",
            Level::Info,
            "ok",
            serde_json::json!({"path": "backups/x.zip", "bytes": 12}),
        );
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        let v: Value = serde_json::from_str(text.trim()).expect("json");
        for k in [
            "ts", "tool", "env", "event", "level", "msg", "path", "bytes",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["level"], "info");
        assert!(v["ts"].as_str().expect("ts").ends_with('Z'));
        let ev: Event = serde_json::from_value(v).expect("event");
        assert_eq!(ev.str_field("path"), Some("backups/x.zip"));
    }

    #[test]
    fn malformed_lines_are_numbered_and_others_forwarded() {
        let input = b"{\"ts\":\"t\",\"tool\":\"a\",\"env\":\"e\",\"event\":\"x.y\",\"level\":\"info\",\"msg\":\"m\",\"extra\":1}\n\nnot json\n[1,2]\n{\"custom\":true}\n";
        let items: Vec<Upstream> = read_upstream(&input[..]).collect();
        assert_eq!(items.len(), 4);
        assert!(
            matches!(&items[0], Upstream::Event { line_no: 1, event, .. } if event.event == "x.y")
        );
        assert!(matches!(&items[1], Upstream::Malformed { line_no: 3, .. }));
        assert!(
            matches!(&items[2], Upstream::Malformed { line_no: 4, error, .. } if error.contains("array"))
        );
        assert!(matches!(&items[3], Upstream::Other { line_no: 5, .. }));

        let buf = Buf::default();
        let em = Emitter::to_writer("t", "e", Box::new(buf.clone()));
        let mut seen = Vec::new();
        let bad = pump(&em, items.into_iter(), &mut |e: &Event| {
            seen.push(e.event.clone())
        });
        assert_eq!(bad, 2);
        assert_eq!(seen, vec!["x.y".to_string()]);
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(
            text.lines().count(),
            2,
            "event and custom object forwarded: {text}"
        );
        assert!(text.contains("\"extra\":1"), "forwarded unchanged: {text}");
    }

    #[test]
    fn level_parse_and_order() {
        assert_eq!("warn".parse::<Level>(), Ok(Level::Warning));
        assert!("loud".parse::<Level>().is_err());
        assert!(Level::Critical.severity() > Level::Warning.severity());
    }
}
