//! The report's plot, one SVG (plotters' SVG backend): round-trip latency
//! CDFs of TCP and UDP request/response with 64-byte messages (one series
//! per mode, all rounds merged; kernel baselines dashed, each podswitch
//! mode in its baseline's colour) and bars of single- and multi-stream TCP
//! throughput (median, with the min-max range as a whisker).

use anyhow::anyhow;
use plotters::coord::ranged1d::SegmentValue;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::report::{num, ModeReport, Report};

/// Size of the whole picture, pixels.
const SIZE: (u32, u32) = (1400, 1000);

/// One colour per comparison pair: a podswitch mode and its baseline
/// share it.
fn colour(mode: &str) -> RGBColor {
    match mode {
        "kernel-bridge" | "podswitch-local" => RGBColor(31, 119, 180),
        "kernel-hostgw" | "podswitch-native" => RGBColor(255, 127, 14),
        "kernel-vxlan" | "podswitch-vxlan" => RGBColor(44, 160, 44),
        _ => RGBColor(214, 39, 40),
    }
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn cdf_panel(area: &Area<'_>, r: &Report, test: &str) -> anyhow::Result<()> {
    let series: Vec<(&ModeReport, Vec<(f64, f64)>)> = r
        .modes
        .iter()
        .filter_map(|m| {
            let c = m.cdfs.iter().find(|c| c.test == test)?;
            let pts: Vec<(f64, f64)> = c
                .points
                .iter()
                .filter(|p| p[0] > 0.0 && p[0].is_finite())
                .map(|p| (p[0], p[1]))
                .collect();
            (!pts.is_empty()).then_some((m, pts))
        })
        .collect();
    let caption = format!("{test}: round-trip latency CDF (all rounds)");
    if series.is_empty() {
        area.titled(&format!("{caption}: not measured"), ("sans-serif", 16))
            .map_err(plot_err)?;
        return Ok(());
    }
    let xmin = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold(f64::INFINITY, f64::min)
        * 0.9;
    // Up to p99.9 of the slowest mode: the tail beyond is a few samples.
    let xmax = series
        .iter()
        .map(|(_, p)| {
            p.iter()
                .find(|q| q.1 >= 0.999)
                .or(p.last())
                .map_or(1.0, |q| q.0)
        })
        .fold(0.0, f64::max)
        * 1.2;
    let xmax = xmax.max(xmin * 2.0);
    let mut chart = ChartBuilder::on(area)
        .caption(&caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0f64..1f64)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("round trip, microseconds (log scale)")
        .y_desc("fraction of transactions")
        .x_label_formatter(&|v| num(*v))
        .draw()
        .map_err(plot_err)?;
    for (m, pts) in series {
        let style = ShapeStyle {
            color: colour(&m.mode).to_rgba(),
            filled: false,
            stroke_width: 2,
        };
        let pts: Vec<(f64, f64)> = pts.into_iter().filter(|p| p.0 <= xmax).collect();
        let anno = if m.kernel {
            chart
                .draw_series(std::iter::once(DashedPathElement::new(pts, 6, 4, style)))
                .map_err(plot_err)?
        } else {
            chart
                .draw_series(std::iter::once(PathElement::new(pts, style)))
                .map_err(plot_err)?
        };
        let kernel = m.kernel;
        anno.label(m.mode.clone()).legend(move |(x, y)| {
            let pts = vec![(x, y), (x + 24, y)];
            if kernel {
                DashedPathElement::new(pts, 5, 3, style).into_dyn()
            } else {
                PathElement::new(pts, style).into_dyn()
            }
        });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

fn bar_panel(area: &Area<'_>, r: &Report, metric: &str, title: &str) -> anyhow::Result<()> {
    let bars: Vec<(&ModeReport, f64, f64, f64)> = r
        .modes
        .iter()
        .filter_map(|m| {
            let x = m.metric(metric)?;
            x.median.is_finite().then_some((m, x.median, x.min, x.max))
        })
        .collect();
    if bars.is_empty() {
        area.titled(&format!("{title}: not measured"), ("sans-serif", 16))
            .map_err(plot_err)?;
        return Ok(());
    }
    let names: Vec<String> = bars
        .iter()
        .map(|(m, ..)| m.mode.replace("podswitch-", "ps-"))
        .collect();
    let ymax = bars.iter().map(|b| b.3).fold(0.0, f64::max).max(0.1) * 1.15;
    let n = bars.len();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        // A range of n values has n + 1 key points: end at n - 1.
        .build_cartesian_2d((0..n.saturating_sub(1).max(1)).into_segmented(), 0f64..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 12))
        .y_desc("Gbit/s (median, whisker: min-max)")
        .draw()
        .map_err(plot_err)?;
    for (i, (m, median, min, max)) in bars.iter().enumerate() {
        let c = colour(&m.mode);
        let fill = if m.kernel {
            c.mix(0.45).filled()
        } else {
            c.filled()
        };
        let mut rect = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), *median),
            ],
            fill,
        );
        rect.set_margin(0, 0, 12, 12);
        chart.draw_series(std::iter::once(rect)).map_err(plot_err)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![
                    (SegmentValue::CenterOf(i), *min),
                    (SegmentValue::CenterOf(i), *max),
                ],
                BLACK.stroke_width(2),
            )))
            .map_err(plot_err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                num(*median),
                (SegmentValue::CenterOf(i), *max),
                ("sans-serif", 12),
            )))
            .map_err(plot_err)?;
    }
    Ok(())
}

/// The plot as SVG text.
///
/// # Errors
/// If plotters fails to draw (it should not for finite data).
pub fn render_svg(r: &Report) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let title = format!(
            "podswitch bench {}: Linux {}, {} ({} cores), {} rounds",
            r.meta.date, r.meta.kernel, r.meta.cpu, r.meta.cores, r.settings.rounds
        );
        let root = root.titled(&title, ("sans-serif", 18)).map_err(plot_err)?;
        let panels = root.split_evenly((2, 2));
        cdf_panel(&panels[0], r, "tcp-rr-64")?;
        cdf_panel(&panels[1], r, "udp-rr-64")?;
        bar_panel(&panels[2], r, "tcp-stream-1", "TCP throughput, one stream")?;
        bar_panel(
            &panels[3],
            r,
            "tcp-stream-n",
            &format!("TCP throughput, {} streams", r.settings.streams),
        )?;
        root.present().map_err(plot_err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Cdf, Meta, Metric, ModeSetup, Settings};

    fn mode(name: &str, kernel: bool, scale: f64) -> ModeReport {
        ModeReport {
            mode: name.into(),
            kernel,
            setup: ModeSetup {
                shape: "test".into(),
                mtu: Some(1500),
                offloads: Default::default(),
                podswitch_config: Default::default(),
            },
            metrics: vec![Metric::new(
                "tcp-stream-1",
                "tcp-stream-1",
                "Gbit/s",
                true,
                vec![5.0 * scale, 6.0 * scale],
            )],
            cdfs: vec![Cdf {
                test: "tcp-rr-64".into(),
                points: (1..=100)
                    .map(|i| [scale * (10.0 + i as f64), i as f64 / 100.0])
                    .collect(),
            }],
            cpu: vec![],
        }
    }

    #[test]
    fn svg_has_a_series_per_mode() {
        let r = Report {
            meta: Meta {
                date: "2026-11-23T16:00:00Z".into(),
                kernel: "6.1".into(),
                cpu: "cpu".into(),
                cores: 2,
                podswitch_version: "0.1.0".into(),
                load_start: 0.0,
                load_end: 0.0,
                elapsed_s: 1.0,
                cpu_idle_states: String::new(),
            },
            settings: Settings {
                poll_modes: vec![],
                io_backends: vec![],
                quick: true,
                rounds: 2,
                rr_secs: 0.1,
                crr_secs: 0.1,
                stream_secs: 0.1,
                stream_warmup_secs: 0.1,
                pps_secs: 0.1,
                crosscheck_secs: 1,
                crosscheck_warmup_secs: 1,
                crosscheck_runs: 1,
                streams: 4,
                services: 1,
                workers_per_switch: 0,
                modes: vec![],
                tests: vec![],
            },
            modes: vec![
                mode("kernel-bridge", true, 1.0),
                mode("podswitch-local", false, 1.5),
            ],
            comparisons: vec![],
            crosscheck: vec![],
        };
        let svg = render_svg(&r).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // plotters writes a text element's content on a line of its own.
        assert!(svg.contains("\nkernel-bridge\n") && svg.contains("\npodswitch-local\n"));
        // Kernel dashed, podswitch solid: two polylines at least.
        assert!(svg.matches("<polyline").count() >= 2, "{svg}");
        assert!(svg.contains("not measured"), "udp-rr-64 has no data");
    }
}
