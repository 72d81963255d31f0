//! Discord webhook (`DISCORD_WEBHOOK_URL` / `DISCORD_WEBHOOK`): one embed,
//! kept within Discord's limits (counted in UTF-16 units); mentions disabled.

use gates_core::Level;
use serde_json::{json, Value};

use super::{http, Channel, Config, Integration, Lookup, Rendered};
use crate::truncate;

pub struct Discord;

impl Integration for Discord {
    fn channel(&self) -> Channel {
        Channel::Discord
    }

    fn secret_vars(&self) -> &'static str {
        "DISCORD_WEBHOOK_URL"
    }

    fn configure(&self, env: &Lookup<'_>) -> Config {
        http::configure(env, &["DISCORD_WEBHOOK_URL", "DISCORD_WEBHOOK"])
    }

    fn payload(&self, r: &Rendered, _dedup_key: Option<&str>) -> Value {
        discord_payload(r)
    }
}

/// Discord webhook limits (counted in UTF-16 units, as Discord does).
pub mod limits {
    pub const CONTENT: usize = 2000;
    pub const TITLE: usize = 256;
    pub const DESCRIPTION: usize = 4096;
    pub const FIELDS: usize = 25;
    pub const FIELD_NAME: usize = 256;
    pub const FIELD_VALUE: usize = 1024;
    pub const FOOTER: usize = 2048;
    /// Title + description + field names and values + footer of one embed.
    pub const EMBED_TOTAL: usize = 6000;
}

/// An embed field: name, value, inline.
type Field = (String, String, bool);

const FOOTER: &str = "dhash-notify";

/// Discord webhook: a short `content` line plus one embed (title, message as
/// description, fields, colour, timestamp). Mentions are disabled so a message
/// can never ping `@everyone`.
pub fn discord_payload(r: &Rendered) -> Value {
    use limits as L;
    let color: u32 = match r.level {
        Level::Debug => 0x95A5A6,
        Level::Info => 0x3498DB,
        Level::Warning => 0xF1C40F,
        Level::Critical | Level::Error => 0xE74C3C,
    };
    let content = truncate::utf16(
        &format!(
            "{} **[{}]** {}{}",
            r.emoji(),
            r.upper_level(),
            r.title,
            r.env_suffix()
        ),
        L::CONTENT,
    );
    let title = truncate::utf16(&r.title, L::TITLE);
    let (fields, description) = fit_embed(r, &title);
    let fields: Vec<Value> = fields
        .into_iter()
        .map(|(name, value, inline)| json!({"name": name, "value": value, "inline": inline}))
        .collect();
    json!({
        "content": content,
        "embeds": [{
            "title": title,
            "description": description,
            "color": color,
            "fields": fields,
            "footer": {"text": truncate::utf16(FOOTER, L::FOOTER)},
            "timestamp": r.ts,
        }],
        "allowed_mentions": {"parse": []}
    })
}

/// Environment, level and the notification's fields, each cut to its limit.
fn embed_fields(r: &Rendered) -> Vec<Field> {
    use limits as L;
    let mut fields: Vec<Field> = vec![
        ("Environment".into(), r.env.clone(), true),
        ("Level".into(), r.upper_level(), true),
    ];
    for (k, v) in r.field_texts() {
        if fields.len() >= L::FIELDS {
            break;
        }
        let v = if v.is_empty() { "-".to_string() } else { v };
        fields.push((
            truncate::utf16(&k, L::FIELD_NAME),
            truncate::utf16(&v, L::FIELD_VALUE),
            v.len() <= 40,
        ));
    }
    fields
}

/// The fields and description that keep the embed total within 6000: fields
/// give way first (a message is what people read), but the description is
/// never cut below 1000.
fn fit_embed(r: &Rendered, title: &str) -> (Vec<Field>, String) {
    use limits as L;
    let mut fields = embed_fields(r);
    let fixed = truncate::utf16_len(title) + truncate::utf16_len(FOOTER);
    let field_len = |f: &[Field]| -> usize {
        f.iter()
            .map(|(n, v, _)| truncate::utf16_len(n) + truncate::utf16_len(v))
            .sum()
    };
    let min_description = 1000.min(truncate::utf16_len(&r.message));
    while fields.len() > 2 && fixed + field_len(&fields) + min_description > L::EMBED_TOTAL {
        fields.pop();
    }
    let room = L::EMBED_TOTAL.saturating_sub(fixed + field_len(&fields));
    let description = if r.message.is_empty() {
        "(no message)".to_string()
    } else {
        truncate::utf16(&r.message, L::DESCRIPTION.min(room))
    };
    (fields, description)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::rendered;

    #[test]
    fn discord_respects_every_limit() {
        let mut r = rendered(&"m".repeat(5000));
        r.title = "t".repeat(3000);
        r.fields.insert("long".into(), json!("v".repeat(3000)));
        let p = discord_payload(&r);
        let content = p["content"].as_str().expect("content");
        assert!(truncate::utf16_len(content) <= 2000);
        assert!(content.ends_with(truncate::MARKER));
        let e = &p["embeds"][0];
        let title = e["title"].as_str().expect("title");
        let desc = e["description"].as_str().expect("description");
        assert!(truncate::utf16_len(title) <= 256 && title.ends_with(truncate::MARKER));
        assert!(truncate::utf16_len(desc) <= 4096 && desc.ends_with(truncate::MARKER));
        let mut total = truncate::utf16_len(title) + truncate::utf16_len(desc);
        for f in e["fields"].as_array().expect("fields") {
            let v = f["value"].as_str().expect("value");
            assert!(truncate::utf16_len(v) <= 1024);
            total += truncate::utf16_len(v) + truncate::utf16_len(f["name"].as_str().expect("n"));
        }
        total += truncate::utf16_len(e["footer"]["text"].as_str().expect("footer"));
        assert!(total <= 6000, "embed total {total}");
    }
}
