//! One handler per command: each calls one library function with the options its arguments
//! make and prints the result. Grouped as the arguments are.

mod compare;
mod data;
mod model;
mod train;

use anyhow::Result;

use crate::args::{BenchCommand, Cli, Command};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Stats(a) => data::stats(&a),
        Command::Split(a) => data::split(&a),
        Command::Check(a) => data::check(&a),
        Command::Synth(a) => data::synth(&a),
        Command::AugmentPreview(a) => data::preview(&a),
        Command::Bench(BenchCommand::Pipeline(a)) => model::bench_pipeline(&a),
        Command::Bench(BenchCommand::Model(a)) => model::bench_model(&a),
        Command::Model(a) => model::model(&a),
        Command::Export(a) => model::export(&a),
        Command::Demo(a) => train::demo(&a),
        Command::Train(a) => train::train(&a),
        Command::Evaluate(a) => train::evaluate(&a),
        Command::Predict(a) => train::predict(&a),
        Command::Explain(a) => compare::explain(&a),
        Command::Report(a) => compare::report(&a),
        Command::Ensemble(a) => compare::ensemble(&a),
        Command::Cv(a) => compare::cv(&a),
        Command::Sweep(a) => compare::sweep(&a),
        Command::Threshold(a) => compare::threshold(&a),
        Command::Compare(a) => compare::compare(&a),
        #[cfg(feature = "serve")]
        Command::Serve(a) => serve(&a),
    }
}

#[cfg(feature = "serve")]
fn serve(a: &crate::args::ServeArgs) -> Result<()> {
    let name = a.run.display().to_string();
    mura_serve::serve(&a.run, &a.options(), |addr| {
        println!("serving {name} on http://{addr}/ (Ctrl-C stops)");
    })?;
    Ok(())
}
