//! `skiff snapshot NAME TAG`, `skiff snapshot ls|rm`, and `skiff run
//! --from-snapshot TAG`, through the daemon's API.

use crate::cli_args::RunArgs;
use crate::cli_vm::typed;
use crate::client::Client;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::json;

/// `skiff snapshot NAME TAG`, or one of its subcommands (a VM named `ls`
/// or `rm` is snapshotted through the API).
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub action: Option<SnapshotCommand>,
    /// The pausable VM to save (running: paused for the save, then
    /// resumed; paused: taken as it is).
    #[arg(required = true, value_name = "NAME")]
    pub name: Option<String>,
    /// The snapshot's name; start VMs from it with `skiff run
    /// --from-snapshot TAG`.
    #[arg(required = true, value_name = "TAG")]
    pub tag: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// List snapshots.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove snapshots (VMs started from them keep their own copies).
    Rm {
        #[arg(required = true, value_name = "TAG")]
        tags: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn snapshot(c: &Client, a: SnapshotArgs) -> Result<i32> {
    match (a.action, a.name, a.tag) {
        (Some(SnapshotCommand::Ls { json }), _, _) => list(c, json).await,
        (Some(SnapshotCommand::Rm { tags, json }), _, _) => {
            crate::cli_vm::delete_each(c, &tags, "snapshot ", json, |t| {
                format!("/v1/snapshots/{t}")
            })
            .await
        }
        (None, Some(name), Some(tag)) => {
            let body = c
                .call(
                    Method::POST,
                    &format!("/v1/vms/{name}/snapshot"),
                    Some(json!({ "tag": tag })),
                )
                .await?;
            let s: skiff_api::Snapshot = typed(&body)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("snapshot {} of {}: {} MiB", s.tag, s.vm, s.size >> 20);
            }
            Ok(0)
        }
        _ => bail!("give the VM and the tag: skiff snapshot NAME TAG"),
    }
}

async fn list(c: &Client, json: bool) -> Result<i32> {
    let body = c.call(Method::GET, "/v1/snapshots", None).await?;
    let all: Vec<skiff_api::Snapshot> = typed(&body)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    println!("{:<24} {:<24} {:>8} {:>7}", "TAG", "VM", "MEMORY", "SIZE");
    for s in all {
        println!(
            "{:<24} {:<24} {:>6}Mi {:>5}Mi",
            s.tag,
            s.vm,
            s.spec.memory_mib,
            s.size >> 20
        );
    }
    Ok(0)
}

/// `skiff run --from-snapshot TAG`: a new VM restored from TAG; with -d
/// it stays and its name is printed, else COMMAND runs in it and it goes.
pub async fn run_from_snapshot(c: &Client, tag: &str, a: RunArgs) -> Result<i32> {
    if !a.detach && a.command.is_empty() {
        bail!("no command given; give it after --, or use -d to keep the VM");
    }
    c.ensure_daemon().await?;
    let body = c
        .call(
            Method::POST,
            &format!("/v1/snapshots/{tag}/start"),
            Some(json!({ "name": a.name })),
        )
        .await?;
    let vm: skiff_api::Vm = typed(&body)?;
    if a.detach {
        println!("{}", vm.name);
        return Ok(0);
    }
    crate::cli_pool::run_then_destroy(c, &vm.name, a.command, a.env, a.workdir, a.interactive).await
}
