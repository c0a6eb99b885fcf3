//! `skiff pool create/ls/rm/resize` and `skiff run --pool`, through the
//! daemon's API.

use crate::cli_vm::typed;
use crate::client::Client;
use anyhow::Result;
use clap::Subcommand;
use hyper::Method;
use serde_json::json;

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Create a pool: the daemon keeps SIZE sandboxes booted and ready.
    Create {
        name: String,
        /// Sandboxes kept ready.
        #[arg(long, default_value_t = 1)]
        size: u32,
        /// Image to boot (see `skiff image ls`); default: the minimal one.
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory in MiB.
        #[arg(long)]
        memory: Option<u32>,
        /// none (default), user, or a managed network's name.
        #[arg(long)]
        net: Option<String>,
        /// Seconds a taken sandbox lives (default 600).
        #[arg(long)]
        ttl: Option<u64>,
        /// Sandboxes can be paused and resumed (`skiff pause`); not with
        /// --image.
        #[arg(long)]
        pausable: bool,
        /// With --pausable: keep this many ready sandboxes running and the
        /// rest asleep (paused, their memory given back); a take wakes one
        /// in about 0.3 s when none runs.
        #[arg(long, requires = "pausable")]
        awake: Option<u32>,
        /// With --pausable: a taken sandbox that nobody used for this many
        /// seconds is put to sleep, and its next exec, copy or command
        /// wakes it.
        #[arg(long, value_name = "SECS", requires = "pausable")]
        sleep_after: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// List pools: ready, booting and taken sandboxes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove pools (their warm sandboxes at once; taken ones at their end).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Change how many sandboxes a pool keeps ready.
    Resize {
        name: String,
        size: u32,
        #[arg(long)]
        json: bool,
    },
    /// Take a ready sandbox and print its name (use it with exec, cp,
    /// shell; `skiff rm --force NAME` destroys it, or its time to live).
    Take {
        name: String,
        /// Seconds it lives (default: the pool's).
        #[arg(long)]
        ttl: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn pool(c: &Client, cmd: PoolCommand) -> Result<i32> {
    match cmd {
        PoolCommand::Create {
            name,
            size,
            image,
            cpus,
            memory,
            net,
            ttl,
            pausable,
            awake,
            sleep_after,
            json,
        } => {
            // An OCI image the cache lacks is pulled here, with progress.
            if let Some(image) = &image {
                crate::cli_image::resolve(image, false).await?;
            }
            let body = skiff_api::CreatePool {
                name: name.clone(),
                size,
                image,
                cpus,
                memory_mib: memory,
                net,
                ttl_secs: ttl,
                pausable,
                awake,
                sleep_after_secs: sleep_after,
            };
            let created = c
                .call(Method::POST, "/v1/pools", Some(serde_json::to_value(body)?))
                .await?;
            if json {
                let v: serde_json::Value = serde_json::from_slice(&created)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(0);
            }
            println!("created pool {name} ({size} ready sandboxes)");
            Ok(0)
        }
        PoolCommand::Ls { json } => {
            let body = c.call(Method::GET, "/v1/pools", None).await?;
            let pools: Vec<skiff_api::Pool> = typed(&body)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pools)?);
                return Ok(0);
            }
            println!(
                "{:<20} {:>5} {:>6} {:>8} {:>8} {:>6} {:>8}",
                "NAME", "SIZE", "READY", "SLEEPING", "BOOTING", "TAKEN", "TTL"
            );
            for p in pools {
                println!(
                    "{:<20} {:>5} {:>6} {:>8} {:>8} {:>6} {:>7}s",
                    p.name, p.size, p.ready, p.sleeping, p.booting, p.taken, p.ttl_secs
                );
            }
            Ok(0)
        }
        PoolCommand::Rm { names, json } => {
            crate::cli_vm::delete_each(c, &names, "pool ", json, |n| format!("/v1/pools/{n}")).await
        }
        PoolCommand::Resize { name, size, json } => {
            c.call(
                Method::POST,
                &format!("/v1/pools/{name}/resize"),
                Some(json!({ "size": size })),
            )
            .await?;
            if json {
                println!("{}", json!({ "name": name, "size": size }));
            } else {
                println!("pool {name} keeps {size} sandboxes ready");
            }
            Ok(0)
        }
        PoolCommand::Take { name, ttl, json } => {
            let body = c
                .call(
                    Method::POST,
                    &format!("/v1/pools/{name}/take"),
                    Some(json!({ "ttl_secs": ttl })),
                )
                .await?;
            let sandbox: skiff_api::Sandbox = typed(&body)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sandbox)?);
            } else {
                println!("{}", sandbox.vm);
            }
            Ok(0)
        }
    }
}

/// `skiff run --pool NAME -- CMD`: take a ready sandbox, run CMD in it,
/// destroy it. The exit code is the command's.
pub async fn run_in_pool(
    c: &Client,
    pool: &str,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    interactive: bool,
) -> Result<i32> {
    let body = c
        .call(
            Method::POST,
            &format!("/v1/pools/{pool}/take"),
            Some(json!({})),
        )
        .await?;
    let vm = typed::<skiff_api::Sandbox>(&body)?.vm;
    run_then_destroy(c, &vm, argv, env, workdir, interactive).await
}

/// Run `argv` in the throw-away VM `vm`, then destroy it whatever the
/// command did. The exit code is the command's.
pub(crate) async fn run_then_destroy(
    c: &Client,
    vm: &str,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    interactive: bool,
) -> Result<i32> {
    let opts = crate::cli_vm::ExecOptions {
        env,
        workdir,
        user: None,
    };
    let result = crate::cli_vm::exec(c, vm, argv, opts, interactive).await;
    // Destroyed, never reused, whatever the command did.
    let removed = c
        .call(
            Method::DELETE,
            &format!("/v1/vms/{vm}?force=true&volumes=true"),
            None,
        )
        .await;
    if let Err(e) = removed {
        eprintln!("skiff: warning: sandbox {vm} not removed: {e:#}");
    }
    result
}
