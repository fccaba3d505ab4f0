//! The report's HTML: the comparison table, the curves, ROC and reliability images, the
//! per-part kappa beside the paper, the pairwise tests and the confusion matrices. No external
//! style sheet, script or font.

use std::fmt::Write as _;

use mura_metrics::BinaryReport;

use super::{Entry, PAPER_KAPPA, Pairwise, ReportOptions};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn f3(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3}"))
}

/// The page's only script: it says on the page when an image did not load (a moved report),
/// and records how many did in `data-images-loaded` for automated checks.
const SCRIPT: &str = r#"window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
  if (ok < imgs.length) {
    var p = document.createElement('p');
    p.className = 'warn';
    p.textContent = (imgs.length - ok) + ' image(s) did not load: keep the PNG files beside index.html.';
    document.body.insertBefore(p, document.body.firstChild);
  }
});"#;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}\
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #ddd}\
.warn{background:#fee;border:1px solid #c00;padding:.5em}.cm{display:inline-block;margin-right:2em;vertical-align:top}\
.note{color:#666;font-size:90%}";

pub(super) fn page(
    entries: &[Entry],
    tests: &[Pairwise],
    options: &ReportOptions,
    curves: bool,
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>mura report: {} run(s)</title>\n<style>{STYLE}</style>\n<script>{SCRIPT}</script>\n</head>\n<body>\n<h1>mura report</h1>\n<p class=\"note\">Test split (the official MURA valid set); a study's probability is the mean of its images'. Ordered by {}.</p>\n",
        entries.len(),
        esc(&options.sort_by)
    );
    comparison(&mut h, entries);
    if curves {
        h.push_str("<h2>Training curves</h2>\n<p class=\"note\">Train dashed, validation solid.</p>\n<img src=\"curves.png\" alt=\"training curves: loss, AUC, accuracy and kappa by epoch\">\n");
    }
    h.push_str("<h2>ROC curves and reliability</h2>\n<p class=\"note\">Reliability: per bin of predicted probability (10 equal-width bins), the mean prediction against the share of abnormal studies; the diagonal is perfect calibration.</p>\n<img src=\"roc.png\" alt=\"study-level ROC curves and reliability diagrams\">\n");
    kappa_by_part(&mut h, entries);
    if !tests.is_empty() {
        pairwise_tests(&mut h, entries, tests);
    }
    confusion_matrices(&mut h, entries);
    h.push_str("</body>\n</html>\n");
    h
}

/// The comparison table, one row per entry in the chosen order.
fn comparison(h: &mut String, entries: &[Entry]) {
    h.push_str("<h2>Comparison</h2>\n<table id=\"comparison\">\n<tr><th>#</th><th class=\"l\">run</th><th class=\"l\">model</th><th>epochs</th><th>best val AUC</th><th>study AUC</th><th>study κ @0.5</th><th>threshold</th><th>study κ @threshold</th><th>accuracy</th><th>sensitivity</th><th>specificity</th><th>F1</th><th>image AUC</th><th>Brier</th><th>ECE</th><th>studies</th></tr>\n");
    for (i, e) in entries.iter().enumerate() {
        let s = &e.studies;
        let threshold = e.threshold.map_or("–".into(), |t| {
            format!("{:.3} ({})", t.value, t.criterion.as_str())
        });
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
            i + 1,
            esc(&e.name),
            esc(&e.model),
            e.epochs,
            f3(e.best_val_auc),
            f3(s.auc),
            f3(s.kappa),
            threshold,
            f3(e.at_threshold.as_ref().and_then(|r| r.kappa)),
            f3(s.accuracy),
            f3(s.recall),
            f3(s.specificity),
            f3(s.f1),
            f3(e.images.auc),
            e.brier,
            e.ece,
            s.n
        );
    }
    h.push_str("</table>\n");
}

/// Study-level kappa per body part beside the MURA paper's.
fn kappa_by_part(h: &mut String, entries: &[Entry]) {
    h.push_str("<h2>Study-level Cohen's κ per body part (threshold 0.5)</h2>\n<table id=\"kappa\">\n<tr><th class=\"l\">body part</th>");
    for e in entries {
        let _ = write!(h, "<th>{}</th>", esc(&e.name));
    }
    h.push_str("<th>MURA paper (test)</th></tr>\n");
    for (part, paper) in PAPER_KAPPA {
        let _ = write!(h, "<tr><td class=\"l\">{part}</td>");
        for e in entries {
            let k = if part == "all" {
                e.studies.kappa
            } else {
                e.study_parts.get(part).and_then(|r| r.kappa)
            };
            let _ = write!(h, "<td>{}</td>", f3(k));
        }
        let _ = writeln!(h, "<td>{paper:.3}</td></tr>");
    }
    h.push_str("</table>\n<p class=\"note\">The paper's figures are on MURA's hidden test set; ours on the public valid set.</p>\n");
}

/// The matrix of DeLong p-values (upper triangle: row − column AUC difference and p).
fn pairwise_tests(h: &mut String, entries: &[Entry], tests: &[Pairwise]) {
    h.push_str("<h2>Pairwise tests of the study-level AUC</h2>\n<p class=\"note\">DeLong's test for two correlated AUCs on the studies both scored: the row's AUC minus the column's, and the two-sided p-value. <code>mura compare A B</code> adds kappa and accuracy by paired bootstrap.</p>\n<table id=\"pairwise\">\n<tr><th class=\"l\"></th>");
    for e in entries {
        let _ = write!(h, "<th>{}</th>", esc(&e.name));
    }
    h.push_str("</tr>\n");
    for (i, row) in entries.iter().enumerate() {
        let _ = write!(h, "<tr><th class=\"l\">{}</th>", esc(&row.name));
        for j in 0..entries.len() {
            let cell = tests
                .iter()
                .find(|t| t.a == i && t.b == j)
                .map(|t| match &t.test {
                    Some(d) => format!("{:+.3} (p {:.3})", d.difference, d.p_value),
                    None if t.studies == 0 => "no common study".into(),
                    None => "–".into(),
                })
                .unwrap_or_default();
            let _ = write!(h, "<td>{cell}</td>");
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

/// The study-level confusion matrices at 0.5 and at the chosen threshold.
fn confusion_matrices(h: &mut String, entries: &[Entry]) {
    h.push_str("<h2>Confusion matrices (studies)</h2>\n");
    for e in entries {
        let _ = writeln!(h, "<h3>{}</h3>", esc(&e.name));
        let mut cm = |title: String, r: &BinaryReport| {
            let c = &r.confusion;
            let _ = writeln!(
                h,
                "<div class=\"cm\"><table><tr><th class=\"l\">{}</th><th>predicted normal</th><th>predicted abnormal</th></tr><tr><th class=\"l\">normal</th><td>{}</td><td>{}</td></tr><tr><th class=\"l\">abnormal</th><td>{}</td><td>{}</td></tr></table></div>",
                esc(&title),
                c.true_negative,
                c.false_positive,
                c.false_negative,
                c.true_positive
            );
        };
        cm("threshold 0.5".into(), &e.studies);
        if let (Some(t), Some(r)) = (e.threshold, &e.at_threshold) {
            let title = format!(
                "threshold {:.3} (max {} on val)",
                t.value,
                t.criterion.as_str()
            );
            cm(title, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_names() {
        assert_eq!(esc("a<b>&\"c\""), "a&lt;b&gt;&amp;&quot;c&quot;");
    }
}
