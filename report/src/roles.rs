//! `data-role` attributes on the elements of a plotters SVG chart, so a
//! browser test (or a reader's devtools) can find the threshold line, the
//! rollback marker, a shaded stretch or a bar in the DOM. plotters' SVG
//! backend takes no attributes, so an element is recognised by its colour,
//! which only that role uses in the plot (the legend excepted, see
//! [`tag`]); the backend writes one element per line.

use plotters::style::RGBColor;

/// Which paint of an element carries the role's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    /// A line (`<polyline>`, `<line>`) drawn in the colour.
    Stroke,
    /// A filled rectangle (`<rect>`): shaded stretches, bands, bars.
    Fill,
}

#[derive(Debug, Clone, Copy)]
pub struct Role {
    pub paint: Paint,
    pub colour: RGBColor,
    pub name: &'static str,
}

impl Role {
    pub const fn stroke(colour: RGBColor, name: &'static str) -> Role {
        Role {
            paint: Paint::Stroke,
            colour,
            name,
        }
    }
    pub const fn fill(colour: RGBColor, name: &'static str) -> Role {
        Role {
            paint: Paint::Fill,
            colour,
            name,
        }
    }
    fn attribute(&self) -> String {
        let RGBColor(r, g, b) = self.colour;
        let paint = match self.paint {
            Paint::Stroke => "stroke",
            Paint::Fill => "fill",
        };
        format!("{paint}=\"#{r:02X}{g:02X}{b:02X}\"")
    }
    fn elements(&self) -> &'static [&'static str] {
        match self.paint {
            Paint::Stroke => &["<polyline ", "<line "],
            Paint::Fill => &["<rect "],
        }
    }
}

/// The legend's background, the one element drawn with opacity 0.8: what
/// follows it is the legend, whose samples share the roles' colours and
/// stay untagged.
pub const LEGEND_BACKGROUND: &str = "opacity=\"0.8\"";

/// `svg` with `data-role="<name>"` on each plotted element of a role.
pub fn tag(svg: &str, roles: &[Role]) -> String {
    let roles: Vec<(String, &Role)> = roles.iter().map(|r| (r.attribute(), r)).collect();
    let mut out = String::with_capacity(svg.len() + 1024);
    let mut in_legend = false;
    for line in svg.split_inclusive('\n') {
        in_legend |= line.starts_with("<rect") && line.contains(LEGEND_BACKGROUND);
        let hit = roles.iter().find_map(|(attr, role)| {
            let rest = role
                .elements()
                .iter()
                .find_map(|el| line.strip_prefix(el))?;
            line.contains(attr.as_str()).then_some((rest, role.name))
        });
        match hit {
            Some((rest, name)) if !in_legend => {
                let element = &line[..line.len() - rest.len()];
                out.push_str(&format!("{element}data-role=\"{name}\" {rest}"));
            }
            _ => out.push_str(line),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_tag_the_plotted_elements_not_the_legend_samples() {
        let svg = "<svg>\n\
            <polyline fill=\"none\" opacity=\"1\" stroke=\"#5A5A5A\" stroke-width=\"2\" points=\"1,5 7,5 \"/>\n\
            <polyline fill=\"none\" opacity=\"1\" stroke=\"#0000FF\" stroke-width=\"2\" points=\"3,0 3,9 \"/>\n\
            <line opacity=\"1\" stroke=\"#00FF00\" stroke-width=\"2\" x1=\"4\" y1=\"0\" x2=\"4\" y2=\"9\"/>\n\
            <rect x=\"1\" y=\"1\" width=\"3\" height=\"9\" opacity=\"1\" fill=\"#E6E6E6\" stroke=\"none\"/>\n\
            <polyline fill=\"none\" opacity=\"1\" stroke=\"#000000\" stroke-width=\"2\" points=\"0,0 9,9 \"/>\n\
            <rect x=\"5\" y=\"5\" width=\"9\" height=\"9\" opacity=\"0.8\" fill=\"#FFFFFF\" stroke=\"none\"/>\n\
            <polyline fill=\"none\" opacity=\"1\" stroke=\"#0000FF\" stroke-width=\"2\" points=\"6,6 22,6 \"/>\n\
            <rect x=\"6\" y=\"6\" width=\"3\" height=\"3\" opacity=\"1\" fill=\"#E6E6E6\" stroke=\"none\"/>\n\
            </svg>\n";
        let roles = [
            Role::stroke(RGBColor(90, 90, 90), "threshold"),
            Role::stroke(RGBColor(0, 0, 255), "rollback"),
            Role::stroke(RGBColor(0, 255, 0), "healthy"),
            Role::fill(RGBColor(230, 230, 230), "pending"),
        ];
        let out = tag(svg, &roles);
        for role in ["threshold", "rollback", "healthy", "pending"] {
            assert_eq!(
                out.matches(&format!("data-role=\"{role}\"")).count(),
                1,
                "{out}"
            );
        }
        assert!(out.contains("<line data-role=\"healthy\" opacity"), "{out}");
        assert!(out.contains("<rect data-role=\"pending\" x=\"1\""), "{out}");
        let legend = &out[out.find(LEGEND_BACKGROUND).expect("the legend")..];
        assert!(!legend.contains("data-role"), "legend untagged: {out}");
        let mut plain = out.clone();
        for role in ["threshold", "rollback", "healthy", "pending"] {
            plain = plain.replace(&format!(" data-role=\"{role}\""), "");
        }
        assert_eq!(plain, svg);
    }
}
