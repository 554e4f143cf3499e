//! The report's pictures, as SVG strings: launch waterfalls as a Gantt chart, throughput bars, and memory
//! and p99 against N.
//!
//! Why plotters with only its SVG backend: SVG sits next to report.md and renders wherever markdown does,
//! and plotters' SVG text is plain `<text>` sized by its built-in estimate, so drawing needs no system
//! fonts, fontconfig or bitmap code. Only the bench links it; the shipped `pam-lite` binary does not.
//!
//! Every label that can come from outside (a `--timing-json` file's checkpoint names) has already been
//! made safe by [`crate::timing_file::safe_text`]; plotters escapes XML metacharacters itself.

use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::RangedCoordusize;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One colour per system, in lane order (tests find a system's bars by its colour).
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// At most this many lanes or bars in one picture (more would be unreadable; the caller is told).
pub const MAX_LANES: usize = 16;

const FONT: &str = "sans-serif";
const WIDTH: u32 = 1000;
const ROW_PX: u32 = 22;

/// Why a chart could not be drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartError(pub String);

impl std::fmt::Display for ChartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chart not drawn: {}", self.0)
    }
}

impl std::error::Error for ChartError {}

fn err<E: std::fmt::Debug>(e: E) -> ChartError {
    ChartError(format!("{e:?}"))
}

/// One system's waterfall: checkpoint names and their offsets from the launch start (ms), in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Lane {
    pub label: String,
    pub checkpoints: Vec<(String, f64)>,
}

/// One bar: a label and a value (`None`: not measured, drawn as a labelled gap).
pub type Bar = (String, Option<f64>);

/// The colour of lane or bar `i`.
pub fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Pixel width a label needs at `size` px (plotters' own estimate for SVG text, plus a margin).
fn label_px(labels: impl Iterator<Item = usize>, size: u32) -> u32 {
    let widest = labels.max().unwrap_or(0) as u32;
    (widest * size * 46 / 100 + 16).clamp(60, 420)
}

fn title(root: &DrawingArea<SVGBackend<'_>, Shift>, text: &str) -> Result<(), ChartError> {
    root.draw(&Text::new(
        text.to_string(),
        (12, 8),
        (FONT, 20).into_font().style(FontStyle::Bold),
    ))
    .map_err(err)
}

/// The row axis of `n` (≥ 1) rows. A range of integers is inclusive in plotters, so n rows are
/// `0..n-1`; a single row gets `0..1` (one empty row) because a one-value axis has no height.
fn rows(n: usize) -> SegmentedCoord<RangedCoordusize> {
    (0..(n - 1).max(1)).into_segmented()
}

/// Checkpoints as a Gantt chart, one panel per system stacked on one time axis: each row is a
/// checkpoint, its bar runs from the previous checkpoint to this one (the step), labelled with the
/// offset. Lanes with no checkpoints are left out by the caller.
pub fn waterfall(heading: &str, lanes: &[Lane]) -> Result<String, ChartError> {
    if lanes.is_empty() || lanes.iter().all(|l| l.checkpoints.is_empty()) {
        return Err(ChartError("no checkpoints to draw".into()));
    }
    if lanes.len() > MAX_LANES {
        return Err(ChartError(format!(
            "{} waterfalls (at most {MAX_LANES})",
            lanes.len()
        )));
    }
    let max_ms = lanes
        .iter()
        .flat_map(|l| l.checkpoints.iter().map(|c| c.1))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.12;
    let label_w = label_px(
        lanes
            .iter()
            .flat_map(|l| l.checkpoints.iter().map(|c| c.0.chars().count())),
        12,
    );
    // Panel height: its rows plus caption and axis.
    let panel_h: Vec<u32> = lanes
        .iter()
        .map(|l| l.checkpoints.len().max(1) as u32 * ROW_PX + 78)
        .collect();
    let height = 40 + panel_h.iter().sum::<u32>();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        title(&root, heading)?;
        let mut breaks = Vec::new();
        let mut y = 40;
        for h in &panel_h {
            breaks.push(y);
            y += h;
        }
        let mut areas = root.split_by_breakpoints([] as [u32; 0], breaks);
        // The first area is the title strip.
        areas.remove(0);
        for (i, (lane, area)) in lanes.iter().zip(areas.iter()).enumerate() {
            draw_lane(area, lane, colour(i), max_ms, label_w)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn draw_lane(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    lane: &Lane,
    colour: RGBColor,
    max_ms: f64,
    label_w: u32,
) -> Result<(), ChartError> {
    let n = lane.checkpoints.len().max(1);
    let names: Vec<String> = lane.checkpoints.iter().map(|c| c.0.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(&lane.label, (FONT, 15))
        .margin_right(20)
        .margin_left(8)
        .x_label_area_size(36)
        .y_label_area_size(label_w)
        .build_cartesian_2d(0f64..max_ms, rows(n))
        .map_err(err)?;
    // Row 0 is the first checkpoint, drawn at the top.
    let row = move |i: usize| n - 1 - i;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(k) if *k < n => {
                names.get(n - 1 - k).cloned().unwrap_or_default()
            }
            _ => String::new(),
        })
        .x_desc("ms since launch start")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FONT, 12))
        .light_line_style(BLACK.mix(0.04))
        .draw()
        .map_err(err)?;
    let mut prev = 0.0f64;
    let mut bars = Vec::new();
    let mut notes = Vec::new();
    for (i, (_, at)) in lane.checkpoints.iter().enumerate() {
        let r = row(i);
        // A zero-length step still shows as a sliver.
        let end = at.max(prev + max_ms / 500.0);
        let mut bar = Rectangle::new(
            [
                (prev, SegmentValue::Exact(r)),
                (end, SegmentValue::Exact(r + 1)),
            ],
            colour.filled(),
        );
        bar.set_margin(2, 2, 0, 0);
        bars.push(bar);
        notes.push(Text::new(
            format!("{at:.0}"),
            (end + max_ms / 200.0, SegmentValue::CenterOf(r)),
            (FONT, 11)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ));
        prev = prev.max(*at);
    }
    chart.draw_series(bars).map_err(err)?;
    chart.draw_series(notes).map_err(err)?;
    Ok(())
}

/// Horizontal bars, one per entry, in panels stacked on their own value axis (e.g. one connection and
/// 16 connections). Each panel: `(caption, bars)`; a bar of `None` is a labelled gap ("not measured").
pub fn bars(
    heading: &str,
    unit: &str,
    panels: &[(String, Vec<Bar>)],
) -> Result<String, ChartError> {
    let panels: Vec<&(String, Vec<Bar>)> = panels.iter().filter(|p| !p.1.is_empty()).collect();
    if panels.is_empty() {
        return Err(ChartError("no bars to draw".into()));
    }
    if panels.iter().any(|p| p.1.len() > MAX_LANES) {
        return Err(ChartError(format!("more than {MAX_LANES} bars in a panel")));
    }
    let label_w = label_px(
        panels
            .iter()
            .flat_map(|p| p.1.iter().map(|b| b.0.chars().count())),
        12,
    );
    let panel_h: Vec<u32> = panels
        .iter()
        .map(|p| p.1.len() as u32 * (ROW_PX + 6) + 75)
        .collect();
    let height = 40 + panel_h.iter().sum::<u32>();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        title(&root, heading)?;
        let mut breaks = Vec::new();
        let mut y = 40;
        for h in &panel_h {
            breaks.push(y);
            y += h;
        }
        let mut areas = root.split_by_breakpoints([] as [u32; 0], breaks);
        areas.remove(0);
        for ((caption, bars), area) in panels.iter().map(|p| (&p.0, &p.1)).zip(areas.iter()) {
            draw_bars(area, caption, unit, bars, label_w)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn draw_bars(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    unit: &str,
    bars: &[Bar],
    label_w: u32,
) -> Result<(), ChartError> {
    let n = bars.len();
    let max = bars
        .iter()
        .filter_map(|b| b.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 15))
        .margin_right(20)
        .margin_left(8)
        .x_label_area_size(36)
        .y_label_area_size(label_w)
        .build_cartesian_2d(0f64..max, rows(n))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(k) if *k < n => {
                names.get(n - 1 - k).cloned().unwrap_or_default()
            }
            _ => String::new(),
        })
        .x_desc(unit)
        .x_label_formatter(&|x| number(*x))
        .label_style((FONT, 12))
        .light_line_style(BLACK.mix(0.04))
        .draw()
        .map_err(err)?;
    let mut rects = Vec::new();
    let mut notes = Vec::new();
    for (i, (_, v)) in bars.iter().enumerate() {
        let r = n - 1 - i;
        let (end, note) = match v {
            Some(v) if v.is_finite() && *v >= 0.0 => {
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(r)),
                        (*v, SegmentValue::Exact(r + 1)),
                    ],
                    colour(i).filled(),
                );
                bar.set_margin(3, 3, 0, 0);
                rects.push(bar);
                (*v, format!("{v:.1}"))
            }
            _ => (0.0, "not measured".to_string()),
        };
        notes.push(Text::new(
            note,
            (end + max / 200.0, SegmentValue::CenterOf(r)),
            (FONT, 11)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ));
    }
    chart.draw_series(rects).map_err(err)?;
    chart.draw_series(notes).map_err(err)?;
    Ok(())
}

/// One line of a plot against N: a name and its `(N, value)` points.
pub type Series = (String, Vec<(f64, f64)>);

/// An axis value without a useless `.0`.
fn number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The N axis from the decade at or below `lo` to the decade above `hi`: a log axis only labels
/// decades, so a range between two decades (N = 2 alone, or 10 and 50) would have no labels at all.
fn decades(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let lo = 10f64.powf(lo.max(1.0).log10().floor());
    let hi = 10f64.powf(hi.max(1.0).log10().floor() + 1.0);
    lo..hi
}

/// Plots side by side, each `(caption, y unit, series)`, on a logarithmic N axis (N spans 2 to 1000).
pub fn against_n(
    heading: &str,
    plots: &[(String, String, Vec<Series>)],
) -> Result<String, ChartError> {
    let points = |p: &(String, String, Vec<Series>)| -> Vec<(f64, f64)> {
        p.2.iter()
            .flat_map(|s| s.1.iter().copied())
            .filter(|(x, y)| x.is_finite() && *x > 0.0 && y.is_finite())
            .collect()
    };
    if plots.is_empty() || plots.iter().all(|p| points(p).is_empty()) {
        return Err(ChartError("no points to draw".into()));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        title(&root, heading)?;
        let body = root.split_vertically(40).1;
        let areas = body.split_evenly((1, plots.len()));
        for (plot, area) in plots.iter().zip(areas.iter()) {
            let pts = points(plot);
            if pts.is_empty() {
                continue;
            }
            let (lo, hi) = pts.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
                (lo.min(*x), hi.max(*x))
            });
            let ymax = pts.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.15;
            let mut chart = ChartBuilder::on(area)
                .caption(&plot.0, (FONT, 15))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(decades(lo, hi).log_scale(), 0f64..ymax)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("N (concurrent launches)")
                .y_desc(plot.1.as_str())
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| number(*y))
                .label_style((FONT, 12))
                .light_line_style(BLACK.mix(0.04))
                .light_line_style(BLACK.mix(0.04))
                .draw()
                .map_err(err)?;
            for (i, (name, series)) in plot.2.iter().enumerate() {
                let c = colour(i);
                let mut pts: Vec<(f64, f64)> = series
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && *x > 0.0 && y.is_finite())
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(err)?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled())
                    });
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FONT, 12))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// The SVG parsed as XML (a malformed document fails the test).
    pub fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).expect("well-formed SVG")
    }

    /// `#RRGGBB` of a palette colour, as plotters writes it.
    pub fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    /// Filled rectangles of colour `c`.
    pub fn rects_of(doc: &roxmltree::Document<'_>, c: RGBColor) -> usize {
        let want = hex(c);
        doc.descendants()
            .filter(|n| n.has_tag_name("rect"))
            .filter(|n| {
                n.attribute("fill")
                    .is_some_and(|f| f.eq_ignore_ascii_case(&want))
            })
            .count()
    }

    /// Every `<text>`'s content.
    pub fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or("").trim().to_string())
            .collect()
    }

    fn lane(label: &str, cps: &[(&str, f64)]) -> Lane {
        Lane {
            label: label.into(),
            checkpoints: cps.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
        }
    }

    #[test]
    fn waterfall_has_one_bar_per_checkpoint_per_system() {
        let lanes = [
            lane(
                "fast",
                &[
                    ("enter", 1.0),
                    ("relay_creds_ok", 300.0),
                    ("first byte echoed", 2200.0),
                ],
            ),
            lane(
                "commander-1984",
                &[("enter", 2.0), ("pre_offer_sleep_done", 3300.0)],
            ),
            lane(
                "Commander <real> & co",
                &[
                    ("start_rust_tunnel returned", 5100.0),
                    ("first byte echoed", 6200.0),
                ],
            ),
        ];
        let svg = waterfall("Launch waterfall", &lanes).expect("drawn");
        let doc = parse(&svg);
        let texts = texts(&doc);
        for (i, l) in lanes.iter().enumerate() {
            assert_eq!(
                rects_of(&doc, colour(i)),
                l.checkpoints.len(),
                "{}",
                l.label
            );
            assert!(texts.contains(&l.label), "{} in {texts:?}", l.label);
            for (name, at) in &l.checkpoints {
                assert!(texts.contains(name), "{name} in {texts:?}");
                assert!(texts.contains(&format!("{at:.0}")), "{at} in {texts:?}");
            }
        }
        assert!(texts.contains(&"Launch waterfall".to_string()));
    }

    #[test]
    fn a_single_row_is_drawn() {
        let svg = waterfall("one", &[lane("only", &[("enter", 3.0)])]).expect("drawn");
        let doc = parse(&svg);
        assert_eq!(rects_of(&doc, colour(0)), 1);
        // The bar has a height (a one-value axis would have none).
        let bar = doc
            .descendants()
            .find(|n| {
                n.has_tag_name("rect") && n.attribute("fill") == Some(hex(colour(0)).as_str())
            })
            .expect("the bar");
        let h: f64 = bar
            .attribute("height")
            .and_then(|h| h.parse().ok())
            .expect("height");
        assert!(h > 10.0, "bar height {h}");
        let svg = bars(
            "one",
            "MB/s",
            &[("p".into(), vec![("x".into(), Some(1.0))])],
        )
        .expect("drawn");
        assert_eq!(rects_of(&parse(&svg), colour(0)), 1);
    }

    #[test]
    fn empty_or_oversized_input_is_an_error_not_a_panic() {
        assert!(waterfall("x", &[]).is_err());
        assert!(waterfall("x", &[lane("a", &[])]).is_err());
        let many: Vec<Lane> = (0..MAX_LANES + 1)
            .map(|i| lane(&i.to_string(), &[("a", 1.0)]))
            .collect();
        assert!(waterfall("x", &many)
            .unwrap_err()
            .to_string()
            .contains("at most"));
        assert!(bars("x", "MB/s", &[]).is_err());
        assert!(against_n("x", &[]).is_err());
    }

    #[test]
    fn bars_per_system_with_gaps_labelled() {
        let panel = vec![
            ("pam-lite pair · smol".to_string(), Some(52.0)),
            ("Keeper pair".to_string(), None),
            ("raw TCP loopback".to_string(), Some(900.0)),
        ];
        let svg = bars(
            "Throughput",
            "MB/s",
            &[("1 connection".into(), panel.clone())],
        )
        .expect("drawn");
        let doc = parse(&svg);
        assert_eq!(rects_of(&doc, colour(0)), 1);
        assert_eq!(rects_of(&doc, colour(1)), 0, "not measured: no bar");
        assert_eq!(rects_of(&doc, colour(2)), 1);
        let texts = texts(&doc);
        for (name, _) in &panel {
            assert!(texts.contains(name), "{name} in {texts:?}");
        }
        assert!(texts.contains(&"not measured".to_string()));
        assert!(texts.contains(&"52.0".to_string()));
    }

    #[test]
    fn n_axis_spans_whole_decades() {
        assert_eq!(decades(2.0, 2.0), 1.0..10.0);
        assert_eq!(decades(10.0, 50.0), 10.0..100.0);
        assert_eq!(decades(10.0, 1000.0), 10.0..10000.0);
        assert_eq!(number(100.0), "100");
        assert_eq!(number(19.44), "19.4");
    }

    #[test]
    fn lines_against_n() {
        let svg = against_n(
            "Scale",
            &[
                (
                    "Memory".into(),
                    "MiB".into(),
                    vec![("RSS".into(), vec![(10.0, 20.0), (50.0, 60.0)])],
                ),
                (
                    "p99".into(),
                    "ms".into(),
                    vec![
                        ("TubeReady p99".into(), vec![(10.0, 2000.0), (50.0, 2500.0)]),
                        (
                            "first echo p99".into(),
                            vec![(10.0, 2100.0), (50.0, 2600.0)],
                        ),
                    ],
                ),
            ],
        )
        .expect("drawn");
        let doc = parse(&svg);
        let texts = texts(&doc);
        for l in ["Memory", "p99", "RSS", "TubeReady p99", "first echo p99"] {
            assert!(texts.contains(&l.to_string()), "{l} in {texts:?}");
        }
        // One marker per point: 2 in the memory plot's colour 0, 2 + 2 in the p99 plot's colours.
        let circles = doc
            .descendants()
            .filter(|n| n.has_tag_name("circle"))
            .count();
        assert_eq!(circles, 6);
    }
}
