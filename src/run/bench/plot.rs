//! `--plot out.svg`: throughput and p95 latency against concurrency, two panels sharing one
//! x axis of evenly spaced settings (1, 2, 4, ... as given; `auto` last, unconnected), the 95%
//! of best throughput line the recommendation rests on, and the recommended setting marked on
//! both panels and labelled.
//!
//! Drawn with plotters' SVG backend into a string: text is left to the SVG viewer's fonts, so
//! no font crate is compiled in.

use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::{RangedCoordf64, RangedCoordi32};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{Report, SettingResult, fmt_rate, label};
use crate::engine::concurrency::Concurrency;

const WIDTH: u32 = 960;
const HEIGHT: u32 = 760;
const FONT: &str = "sans-serif";
const THROUGHPUT: RGBColor = RGBColor(31, 119, 180);
const LATENCY: RGBColor = RGBColor(214, 96, 12);
const MARK: RGBColor = RGBColor(200, 30, 45);
const GUIDE: RGBColor = RGBColor(120, 120, 120);

/// The chart as SVG text.
pub(super) fn render_svg(report: &Report) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, report).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

type DrawResult<T> =
    Result<T, DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>>;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Chart<'a> =
    ChartContext<'a, SVGBackend<'a>, Cartesian2d<SegmentedCoord<RangedCoordi32>, RangedCoordf64>>;

/// The settings along the x axis, in the order drawn (fixed ones by size, then `auto`), and
/// which one is recommended.
struct Axis<'r> {
    settings: Vec<&'r SettingResult>,
    labels: Vec<String>,
    /// The recommended setting's position.
    rec: Option<usize>,
    /// Positions and results of the fixed settings, joined by a line.
    fixed: Vec<(usize, &'r SettingResult)>,
    /// Position and result of `auto`, drawn apart.
    auto: Vec<(usize, &'r SettingResult)>,
}

impl<'r> Axis<'r> {
    fn of(report: &'r Report) -> Self {
        let mut settings: Vec<&SettingResult> = report.settings.iter().collect();
        settings.sort_by_key(|r| match r.concurrency {
            Concurrency::Fixed(n) => n,
            Concurrency::Auto => usize::MAX,
        });
        let rec = report.recommendation.as_ref().and_then(|r| {
            settings
                .iter()
                .position(|s| s.concurrency == Concurrency::Fixed(r.concurrency))
        });
        let positions = |auto: bool| -> Vec<(usize, &'r SettingResult)> {
            settings
                .iter()
                .enumerate()
                .filter(|(_, r)| (r.concurrency == Concurrency::Auto) == auto)
                .map(|(i, r)| (i, *r))
                .collect()
        };
        Axis {
            labels: settings.iter().map(|r| label(r.concurrency)).collect(),
            rec,
            fixed: positions(false),
            auto: positions(true),
            settings,
        }
    }

    /// The number of settings, as plotters counts segments.
    fn len(&self) -> i32 {
        self.settings.len() as i32
    }
}

/// The x position of the `i`-th setting: the middle of its segment.
fn at(i: usize) -> SegmentValue<i32> {
    SegmentValue::CenterOf(i as i32)
}

/// The whole chart: the title, then the throughput panel above the latency panel.
fn draw(root: &Area<'_>, report: &Report) -> DrawResult<()> {
    root.fill(&WHITE)?;
    let (top, bottom) = titled(root, report)?;
    let axis = Axis::of(report);
    draw_throughput(&top, report, &axis)?;
    draw_latency(&bottom, &axis)
}

/// Draws the title (what was swept) and subtitle (where), and returns the areas of the two
/// panels below them.
fn titled<'a>(root: &Area<'a>, report: &Report) -> DrawResult<(Area<'a>, Area<'a>)> {
    let title = format!(
        "batch bench: {}, {} rows x {} run{}, {}",
        short_name(&report.input),
        report.rows,
        report.repeat,
        if report.repeat == 1 { "" } else { "s" },
        report.model
    );
    let root = root.titled(&title, (FONT, 26))?;
    let root = root.margin(0, 10, 10, 20);
    let subtitle = format!("on {}", report.endpoint);
    root.draw(&Text::new(
        subtitle,
        (WIDTH as i32 / 2 - 20, 0),
        (FONT, 17)
            .into_font()
            .color(&GUIDE)
            .pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    Ok(root
        .margin(20, 0, 0, 0)
        .split_vertically(HEIGHT as i32 / 2 - 20))
}

/// The upper panel: rows/s at each setting, the line at 95% of the best the recommendation
/// rests on, and the recommended setting marked and labelled.
fn draw_throughput(area: &Area<'_>, report: &Report, axis: &Axis) -> DrawResult<()> {
    let ymax = axis
        .settings
        .iter()
        .map(|r| r.rows_per_second_max.max(r.rows_per_second))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.3;
    let mut chart = panel(area, "Throughput (higher is better)", "rows/s", axis, ymax)?;
    let rec = report.recommendation.as_ref();
    if let Some(r) = rec {
        let line = 0.95 * r.best_rows_per_second;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(SegmentValue::Exact(0), line), (SegmentValue::Last, line)],
                6,
                4,
                GUIDE.stroke_width(1),
            ))?
            .label("95% of the best throughput")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GUIDE));
    }
    draw_rates(&mut chart, axis, report.repeat)?;
    if let Some(i) = axis.rec {
        mark(&mut chart, i, ymax)?;
        let y = axis.settings[i].rows_per_second;
        chart.draw_series(std::iter::once(Circle::new(
            (at(i), y),
            8,
            MARK.stroke_width(2),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font((FONT, 15))
        .draw()?;
    // The label last, so that nothing covers it.
    if let (Some(i), Some(r)) = (axis.rec, rec) {
        label_recommended(&mut chart, axis, i, r.concurrency, ymax)?;
    }
    Ok(())
}

/// The rows/s of every setting: a line through the fixed ones, `auto` apart as a triangle, the
/// spread of repeated runs as bars, and each value written above its point.
fn draw_rates(chart: &mut Chart<'_>, axis: &Axis, repeat: u32) -> DrawResult<()> {
    chart
        .draw_series(LineSeries::new(
            axis.fixed.iter().map(|(i, r)| (at(*i), r.rows_per_second)),
            THROUGHPUT.stroke_width(2),
        ))?
        .label(if repeat > 1 {
            "rows/s (median; bars: min to max)"
        } else {
            "rows/s"
        })
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], THROUGHPUT.stroke_width(2)));
    chart.draw_series(
        axis.settings
            .iter()
            .enumerate()
            .filter(|(_, r)| r.runs.len() > 1)
            .map(|(i, r)| {
                PathElement::new(
                    vec![
                        (at(i), r.rows_per_second_min),
                        (at(i), r.rows_per_second_max),
                    ],
                    THROUGHPUT.stroke_width(2),
                )
            }),
    )?;
    chart.draw_series(
        axis.fixed
            .iter()
            .map(|(i, r)| Circle::new((at(*i), r.rows_per_second), 4, THROUGHPUT.filled())),
    )?;
    if !axis.auto.is_empty() {
        chart
            .draw_series(axis.auto.iter().map(|(i, r)| {
                TriangleMarker::new((at(*i), r.rows_per_second), 7, THROUGHPUT.filled())
            }))?
            .label("auto")
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, THROUGHPUT.filled()));
    }
    chart.draw_series(axis.settings.iter().enumerate().map(|(i, r)| {
        EmptyElement::at((at(i), r.rows_per_second))
            + Text::new(
                fmt_rate(r.rows_per_second),
                (0, -10),
                (FONT, 14)
                    .into_font()
                    .color(&THROUGHPUT)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
    }))?;
    Ok(())
}

/// "recommended: N" above the `i`-th setting, anchored so that it stays inside the panel at
/// either end of the axis.
fn label_recommended(
    chart: &mut Chart<'_>,
    axis: &Axis,
    i: usize,
    concurrency: usize,
    ymax: f64,
) -> DrawResult<()> {
    let y = axis.settings[i].rows_per_second;
    let n = axis.settings.len();
    let anchor = if i + 1 == n && n > 1 {
        HPos::Right
    } else if i == 0 && n > 1 {
        HPos::Left
    } else {
        HPos::Center
    };
    chart.draw_series(std::iter::once(Text::new(
        format!("recommended: {concurrency}"),
        (at(i), y + ymax * 0.14),
        (FONT, 19)
            .into_font()
            .style(FontStyle::Bold)
            .color(&MARK)
            .pos(Pos::new(anchor, VPos::Bottom)),
    )))?;
    Ok(())
}

/// The lower panel: p95 latency at each setting (fixed ones joined, `auto` apart), each value
/// written above its point, and the recommended setting marked.
fn draw_latency(area: &Area<'_>, axis: &Axis) -> DrawResult<()> {
    let ymax = axis
        .settings
        .iter()
        .map(|r| r.latency_ms.p95.unwrap_or(0.0))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.22;
    let mut chart = panel(
        area,
        "p95 latency (lower is better)",
        "p95 latency, ms",
        axis,
        ymax,
    )?;
    let with_p95 = |v: &[(usize, &SettingResult)]| -> Vec<(usize, f64)> {
        v.iter()
            .filter_map(|(i, r)| r.latency_ms.p95.map(|l| (*i, l)))
            .collect()
    };
    chart.draw_series(LineSeries::new(
        with_p95(&axis.fixed).into_iter().map(|(i, l)| (at(i), l)),
        LATENCY.stroke_width(2),
    ))?;
    chart.draw_series(
        with_p95(&axis.fixed)
            .into_iter()
            .map(|(i, l)| Circle::new((at(i), l), 4, LATENCY.filled())),
    )?;
    chart.draw_series(
        with_p95(&axis.auto)
            .into_iter()
            .map(|(i, l)| TriangleMarker::new((at(i), l), 7, LATENCY.filled())),
    )?;
    chart.draw_series(
        with_p95(
            &axis
                .settings
                .iter()
                .copied()
                .enumerate()
                .collect::<Vec<_>>(),
        )
        .into_iter()
        .map(|(i, l)| {
            EmptyElement::at((at(i), l))
                + Text::new(
                    format!("{l:.0}"),
                    (0, -13),
                    (FONT, 14)
                        .into_font()
                        .color(&LATENCY)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
        }),
    )?;
    if let Some(i) = axis.rec {
        mark(&mut chart, i, ymax)?;
        if let Some(l) = axis.settings[i].latency_ms.p95 {
            chart.draw_series(std::iter::once(Circle::new(
                (at(i), l),
                8,
                MARK.stroke_width(2),
            )))?;
        }
    }
    Ok(())
}

/// One panel: the settings evenly spaced along x and labelled, 0 to `ymax` up.
fn panel<'a>(
    area: &Area<'a>,
    caption: &str,
    y_desc: &str,
    axis: &Axis,
    ymax: f64,
) -> DrawResult<Chart<'a>> {
    let n = axis.len();
    let formatter = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => axis.labels.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .caption(caption, (FONT, 20))
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n as usize + 1)
        .x_label_formatter(&formatter)
        .x_desc("concurrency (requests in flight)")
        .y_desc(y_desc)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 17))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(TRANSPARENT)
        .y_labels(8)
        .draw()?;
    Ok(chart)
}

/// A dashed vertical line through the recommended setting.
fn mark(chart: &mut Chart<'_>, i: usize, ymax: f64) -> DrawResult<()> {
    chart.draw_series(DashedLineSeries::new(
        vec![(at(i), 0.0), (at(i), ymax)],
        5,
        5,
        MARK.mix(0.6).stroke_width(1),
    ))?;
    Ok(())
}

/// The file name of a path, for the title.
fn short_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::bench::report::{Latency, RunMeasure};

    fn setting(c: Concurrency, rps: f64, p95: f64) -> SettingResult {
        let run = RunMeasure {
            rows: 100,
            ok: 100,
            failed: 0,
            skipped: 0,
            retries: 0,
            rate_limited: 0,
            total_tokens: 10_000,
            cost_usd: Some(0.01),
            wall_seconds: 100.0 / rps,
            end_to_end_rows_per_second: rps,
            sustained_rows_per_second: Some(rps),
            latency_ms: Latency {
                p50: Some(p95 * 0.9),
                p90: Some(p95 * 0.95),
                p95: Some(p95),
                p99: Some(p95 * 1.1),
            },
            stopped: None,
        };
        SettingResult::from_runs(c, vec![run])
    }

    #[test]
    fn chart_marks_and_labels_the_recommended_setting() {
        use Concurrency::{Auto, Fixed};
        let report = Report::new(
            std::path::Path::new("samples/reviews.csv"),
            "gpt-4.1-mini",
            "the mock (100 ms latency)".into(),
            200,
            1,
            vec![
                setting(Fixed(1), 10.0, 100.0),
                setting(Fixed(4), 40.0, 100.0),
                setting(Fixed(16), 150.0, 104.0),
                setting(Fixed(32), 155.0, 205.0),
                setting(Auto, 140.0, 120.0),
            ],
            vec![],
        );
        let svg = render_svg(&report).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        assert!(svg.contains("recommended: 16"));
        assert!(svg.contains("Throughput") && svg.contains("p95 latency"));
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| {
                t.split_once('>')
                    .and_then(|(_, rest)| rest.split_once("</text>"))
            })
            .map(|(text, _)| text.trim())
            .collect();
        for l in ["1", "4", "16", "32", "auto"] {
            assert!(texts.contains(&l), "no axis label {l}: {texts:?}");
        }
    }
}
