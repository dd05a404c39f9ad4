//! `ncalm fit-rule` recovers a hidden random rule from its trajectories: the gradients of the 3x3 torus
//! convolution and the per-cell MLP, end to end, judged on fresh trajectories.

mod common;

use common::{fails, ncalm};

#[test]
fn a_hidden_rule_is_recovered_well_above_chance() {
    let out = ncalm(&["fit-rule", "--grid", "8", "--steps", "200", "--sims", "4", "--frames", "6", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (accuracy, majority) =
        (json["accuracy"].as_f64().unwrap(), json["majority_baseline"].as_f64().unwrap());
    println!(
        "fitted rule: {:.1}% of next-state cells (commonest state: {:.1}%)",
        100.0 * accuracy,
        100.0 * majority
    );
    // Chance is 10% for 10 states; always guessing the commonest next state gets about half.
    assert!(accuracy > 0.7 && accuracy > majority + 0.2, "accuracy {accuracy}, majority baseline {majority}");
    fails(&["fit-rule", "--steps", "0"], "must be positive");
}
