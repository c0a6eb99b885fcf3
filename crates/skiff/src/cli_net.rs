//! `skiff network create/ls/rm/prune`, through the daemon's API.

use crate::client::Client;
use anyhow::Result;
use clap::Subcommand;
use hyper::Method;

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Create a network: a bridge with the subnet's first address, NAT for
    /// egress, and an address pool for its VMs. Needs CAP_NET_ADMIN.
    Create {
        name: String,
        /// The subnet, like 10.88.0.0/24.
        #[arg(long)]
        subnet: String,
        /// Name server for its VMs (default: the host's first one).
        #[arg(long)]
        dns: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List networks with their VMs' addresses.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove networks (refused while a VM has an address on one).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove bridges, TAPs, rules and leases left by crashed runs.
    Prune {
        #[arg(long)]
        json: bool,
    },
}

pub async fn network(c: &Client, cmd: NetworkCommand) -> Result<i32> {
    match cmd {
        NetworkCommand::Create {
            name,
            subnet,
            dns,
            json,
        } => {
            let body = c
                .call(
                    Method::POST,
                    "/v1/networks",
                    Some(serde_json::to_value(skiff_api::CreateNetwork {
                        name: name.clone(),
                        subnet,
                        dns,
                    })?),
                )
                .await?;
            let net: skiff_api::Network = crate::cli_vm::typed(&body)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&net)?);
                return Ok(0);
            }
            println!(
                "created network {name}: {} on bridge {}, gateway {}",
                net.subnet, net.bridge, net.gateway
            );
            Ok(0)
        }
        NetworkCommand::Ls { json } => {
            let body = c.call(Method::GET, "/v1/networks", None).await?;
            let networks: Vec<skiff_api::Network> = crate::cli_vm::typed(&body)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&networks)?);
                return Ok(0);
            }
            println!(
                "{:<12} {:<18} {:<15} {:<15} VMS",
                "NAME", "SUBNET", "GATEWAY", "BRIDGE"
            );
            for n in networks {
                let vms: Vec<String> = n
                    .leases
                    .iter()
                    .map(|l| format!("{} ({})", l.vm, l.address))
                    .collect();
                println!(
                    "{:<12} {:<18} {:<15} {:<15} {}",
                    n.name,
                    n.subnet,
                    n.gateway.to_string(),
                    n.bridge,
                    vms.join(", ")
                );
            }
            Ok(0)
        }
        NetworkCommand::Rm { names, json } => {
            crate::cli_vm::delete_each(c, &names, "network ", json, |n| format!("/v1/networks/{n}"))
                .await
        }
        NetworkCommand::Prune { json } => {
            let body = c.call(Method::POST, "/v1/networks/prune", None).await?;
            let report: skiff_api::PruneReport = crate::cli_vm::typed(&body)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(0);
            }
            if report.links.is_empty() && report.tables.is_empty() && report.leases == 0 {
                println!("nothing to prune");
            }
            for l in report.links {
                println!("removed link {l}");
            }
            for t in report.tables {
                println!("removed nftables table {t}");
            }
            if report.leases > 0 {
                println!(
                    "released {} leases of VMs that no longer exist",
                    report.leases
                );
            }
            Ok(0)
        }
    }
}
