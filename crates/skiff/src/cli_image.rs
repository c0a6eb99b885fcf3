//! `skiff image build|pull|import|ls|rm`, and the image `skiff run --image`
//! boots: a recipe image by its name, or an OCI image by its reference
//! (pulled first when it is not in the cache, as docker does).

use anyhow::{Context, Result};
use skiff_daemon::{paths, ui};
use skiff_image::ImageInfo;
use std::path::PathBuf;

fn print(info: &ImageInfo, verb: &str, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(info)?);
    } else {
        println!(
            "{verb} image {} ({}) at {}",
            info.name,
            info.hash,
            info.root.display()
        );
    }
    Ok(())
}

pub async fn build(file: PathBuf, json: bool) -> Result<i32> {
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the recipe {}", file.display()))?;
    let recipe = skiff_image::Recipe::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let cache = paths::cache_dir()?;
    let info = tokio::task::spawn_blocking(move || {
        let progress = ui::StepProgress::new(false);
        skiff_image::build_image(&recipe, &cache, &progress)
    })
    .await??;
    print(&info, "built", json)?;
    Ok(0)
}

pub async fn pull(reference: String, quiet: bool, json: bool) -> Result<i32> {
    let info = pull_image(reference, quiet).await?;
    print(&info, "pulled", json)?;
    Ok(0)
}

async fn pull_image(reference: String, quiet: bool) -> Result<ImageInfo> {
    let r = skiff_oci::Reference::parse(&reference)?;
    let cache = paths::cache_dir()?;
    let info = tokio::task::spawn_blocking(move || {
        let progress = ui::StepProgress::new(quiet);
        skiff_oci::pull(&skiff_oci::Store::new(&cache), &r, &progress)
    })
    .await??;
    Ok(info)
}

pub async fn import(path: PathBuf, name: Option<String>, json: bool) -> Result<i32> {
    let path =
        std::path::absolute(&path).with_context(|| format!("bad path {}", path.display()))?;
    let cache = paths::cache_dir()?;
    let info = tokio::task::spawn_blocking(move || {
        let progress = ui::StepProgress::new(false);
        skiff_oci::import(
            &skiff_oci::Store::new(&cache),
            &path,
            name.as_deref(),
            &progress,
        )
    })
    .await??;
    print(&info, "imported", json)?;
    Ok(0)
}

pub fn ls(json: bool) -> Result<i32> {
    let mut images = skiff_image::list_images(&paths::cache_dir()?);
    // Images made before sizes were recorded are measured now.
    for i in images.iter_mut().filter(|i| i.size.is_none()) {
        i.size = Some(skiff_image::tree_size(&i.root));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(0);
    }
    println!(
        "{:<40} {:<8} {:>10}  {:<26} FROM",
        "NAME", "SOURCE", "SIZE", "HASH"
    );
    for i in &images {
        let from = match (&i.source, &i.recipe) {
            (skiff_image::ImageSource::Pull { digest, .. }, _)
            | (skiff_image::ImageSource::Import { digest, .. }, _) => digest.clone(),
            (_, Some(r)) => format!("debian {}", r.suite),
            (_, None) => String::new(),
        };
        println!(
            "{:<40} {:<8} {:>10}  {:<26} {from}",
            i.name,
            i.source.label(),
            skiff_image::human_size(i.size.unwrap_or(0)),
            i.hash
        );
    }
    Ok(0)
}

pub async fn rm(name: &str, json: bool) -> Result<i32> {
    let cache = paths::cache_dir()?;
    let found = find(name).map(|i| i.name);
    let target = found.as_deref().unwrap_or(name);
    let users = users_of(&[name, target]).await;
    if !users.is_empty() {
        anyhow::bail!(
            "image {target:?} is in use by {}; remove those first (skiff rm, skiff pool rm)",
            users.join(", ")
        );
    }
    if skiff_image::remove_image(&cache, target)? {
        if json {
            println!("{}", serde_json::json!({ "removed": target }));
        } else {
            println!("removed image {target}");
        }
        Ok(0)
    } else {
        anyhow::bail!("no image named {name:?} (see skiff image ls)")
    }
}

/// The VMs and pools of the running daemon (if one answers) that boot
/// the image called any of `names`.
async fn users_of(names: &[&str]) -> Vec<String> {
    use hyper::Method;
    let client = crate::client::Client::new(paths::client_socket_path());
    // Compared as references, so that `alpine` in a spec is `alpine:latest`.
    let norm =
        |i: &str| skiff_oci::Reference::parse(i).map_or_else(|_| i.to_owned(), |r| r.familiar());
    let wanted: Vec<String> = names
        .iter()
        .flat_map(|n| [n.to_string(), norm(n)])
        .collect();
    let uses = |spec: &serde_json::Value| {
        let image = spec["image"].as_str();
        let disk = spec["disk"]["source"]["image"].as_str();
        [image, disk]
            .into_iter()
            .flatten()
            .any(|i| wanted.contains(&i.to_owned()) || wanted.contains(&norm(i)))
    };
    let mut users = Vec::new();
    let list =
        |body: &[u8]| serde_json::from_slice::<Vec<serde_json::Value>>(body).unwrap_or_default();
    if let Ok(body) = client.call(Method::GET, "/v1/vms", None).await {
        for vm in list(&body) {
            if uses(&vm["spec"]) {
                users.push(format!("VM {}", vm["name"].as_str().unwrap_or("?")));
            }
        }
    }
    if let Ok(body) = client.call(Method::GET, "/v1/pools", None).await {
        for pool in list(&body) {
            if uses(&pool["template"]) {
                users.push(format!("pool {}", pool["name"].as_str().unwrap_or("?")));
            }
        }
    }
    users
}

/// `skiff image prune`: blobs no image uses, and partial downloads.
pub fn prune(json: bool) -> Result<i32> {
    let (files, bytes) = skiff_oci::Store::new(&paths::cache_dir()?).prune()?;
    if json {
        println!("{}", serde_json::json!({ "blobs": files, "bytes": bytes }));
    } else {
        println!("removed {files} unused blobs ({bytes} bytes)");
    }
    Ok(0)
}

fn find(name: &str) -> Option<ImageInfo> {
    skiff_oci::find_image(&paths::cache_dir().ok()?, name)
}

/// The image `skiff run --image NAME` (or a spec's `image`) boots: in the
/// cache, or pulled now when NAME is an image reference.
pub async fn resolve(name: &str, quiet: bool) -> Result<ImageInfo> {
    if let Some(info) = find(name) {
        return Ok(info);
    }
    if skiff_oci::pullable(name).is_none() {
        anyhow::bail!(
            "no image named {name:?}; build it from a recipe (`skiff image build -f images/{name}.toml`) or pull it (`skiff image pull {name}`)"
        );
    }
    pull_image(name.to_owned(), quiet)
        .await
        .with_context(|| format!("no image named {name:?} in the cache, and pulling it failed"))
}
