//! Loading the data path: this build's programs and maps, pinned under the pin path.
//!
//! Layout under the pin path: every map pinned by name (the object's pinned maps); this build's
//! programs under `programs/<build>/<program name>`, where `<build>` is [`build_id`] (the
//! object's SHA-256 and the flow cache's size); the TCX links under `links/` (see the parent
//! module).
//!
//! Verifying the programs costs what the host's CPU costs (2-3 s here, most of an agent's
//! start-up). An agent of the same build that finds its programs pinned and bound to the pinned
//! maps opens them from their pins instead ([`open`]): no load, no verification. Otherwise it
//! loads and verifies the object, pins the programs under its own build's directory, and removes
//! the directories of other builds (their programs live on while links run them, until the links
//! are switched to this build's).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData, MapInfo},
    programs::SchedClassifier,
    Ebpf, EbpfLoader,
};
use netpol_common::{FLOW_CACHE_SIZE, MAP_FLOW_CACHE};

use super::{
    error::{DatapathError, Result},
    EBPF_OBJECT, PROG_EXIT, PROG_FROM_POD, PROG_NOOP, PROG_TO_POD,
};

/// Every program of the object, by name.
pub const PROGRAMS: [&str; 4] = [PROG_FROM_POD, PROG_TO_POD, PROG_EXIT, PROG_NOOP];

/// The directory under the pin path that holds the pinned programs of every build.
const PROGRAMS_DIR: &str = "programs";

/// Longest map name the kernel keeps (`BPF_OBJ_NAME_LEN` - 1).
const KERNEL_NAME_LEN: usize = 15;

/// Entries of the flow cache: a region of [`FLOW_CACHE_SIZE`] for every possible CPU. If the
/// count cannot be read, one region: the classifier finds no place for the other CPUs' flows and
/// judges them on the full path (slower, never wrong).
pub fn flow_cache_entries() -> u32 {
    match aya::util::nr_cpus() {
        Ok(cpus) => FLOW_CACHE_SIZE.saturating_mul(u32::try_from(cpus).unwrap_or(u32::MAX)),
        Err((path, error)) => {
            tracing::warn!(%path, %error, "could not count the possible CPUs: the flow cache serves CPU 0 only");
            FLOW_CACHE_SIZE
        }
    }
}

/// Checks that this kernel attaches TC programs through TCX links (Linux 6.6+), which is what
/// lets the links be pinned and outlive the agent: asks for the TCX programs of the loopback
/// interface (`BPF_PROG_QUERY`, read only), which older kernels refuse.
pub fn check_tcx() -> Result<()> {
    use aya::programs::TcAttachType;
    match SchedClassifier::query_tcx("lo", TcAttachType::Ingress) {
        Ok(_) => Ok(()),
        Err(source) => Err(DatapathError::Program {
            op: "this kernel does not attach TC programs through TCX links (Linux 6.6 or newer is needed); querying the TCX programs of lo".into(),
            source: Box::new(source),
        }),
    }
}

/// This build's identity: the first 16 hex digits of the SHA-256 of the eBPF object and the flow
/// cache's size (the one thing the agent changes in the object at load).
pub fn build_id() -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(EBPF_OBJECT);
    ctx.update(&flow_cache_entries().to_le_bytes());
    ctx.finish().as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The loaded programs, by name (see [`PROGRAMS`]).
pub struct Programs(BTreeMap<&'static str, SchedClassifier>);

impl Programs {
    /// The program `name`.
    pub fn get(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        self.0.get_mut(name).ok_or_else(|| DatapathError::Program {
            op: format!("find program {name}"),
            source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
        })
    }
}

/// How the programs came to be: opened from this build's pins, or loaded (and verified).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Opened from the pins an agent of this build left.
    Pinned,
    /// Loaded from the embedded object and pinned.
    Loaded,
}

/// Where maps come from: the object just loaded, or their pins.
pub enum MapSource<'a> {
    /// The object just loaded (its pinned maps were reused or pinned by the loader).
    Object(&'a mut Ebpf),
    /// The pins under this directory.
    Pins(&'a Path),
}

impl MapSource<'_> {
    /// The map `name`, typed.
    pub fn take<T: TryFrom<Map, Error = aya::maps::MapError>>(&mut self, name: &str) -> Result<T> {
        let map_err = |source| DatapathError::Map { op: format!("open map {name}"), source: Box::new(source) };
        let map = match self {
            Self::Object(ebpf) => ebpf.take_map(name).ok_or_else(|| map_err(aya::maps::MapError::InvalidName { name: name.to_string() }))?,
            Self::Pins(dir) => Map::from_map_data(MapData::from_pin(dir.join(name)).map_err(map_err)?).map_err(map_err)?,
        };
        T::try_from(map).map_err(map_err)
    }
}

/// The directory of this build's pinned programs.
fn build_dir(pin_path: &Path) -> PathBuf {
    pin_path.join(PROGRAMS_DIR).join(build_id())
}

/// Opens this build's programs from their pins, if every one is there and uses the maps pinned
/// under `pin_path` now (a map replaced since would leave them on the old one): `None` otherwise.
pub fn open(pin_path: &Path) -> Option<Programs> {
    let dir = build_dir(pin_path);
    let mut programs = BTreeMap::new();
    for name in PROGRAMS {
        programs.insert(name, SchedClassifier::from_pin(dir.join(name)).ok()?);
    }
    let pinned = pinned_map_ids(pin_path)?;
    for (name, program) in &programs {
        let ids = program.info().ok()?.map_ids().ok()??;
        for id in ids.into_iter().filter(|id| !pinned.ids.contains(id)) {
            // A map of the program's own (not pinned) is fine; one whose name is a pinned map's
            // is an earlier instance of it.
            let kernel_name = MapInfo::from_id(id).ok()?.name_as_str().map(str::to_string).unwrap_or_default();
            if pinned.names.contains(&kernel_name) {
                tracing::info!(program = name, map = %kernel_name, "pinned program uses a map replaced since: loading again");
                return None;
            }
        }
    }
    Some(Programs(programs))
}

/// The ids of the maps pinned under a pin path, and their names as the kernel keeps them.
struct PinnedMaps {
    ids: BTreeSet<u32>,
    names: BTreeSet<String>,
}

/// The maps of the object that are pinned by name, as pinned under `pin_path` now (`None` when
/// one is missing).
fn pinned_map_ids(pin_path: &Path) -> Option<PinnedMaps> {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).ok()?;
    let mut out = PinnedMaps { ids: BTreeSet::new(), names: BTreeSet::new() };
    for (name, map) in &obj.maps {
        if map.pinning() != aya_obj::maps::PinningType::ByName {
            continue;
        }
        out.ids.insert(MapInfo::from_pin(pin_path.join(name)).ok()?.id());
        out.names.insert(name.chars().take(KERNEL_NAME_LEN).collect());
    }
    Some(out)
}

/// Loads and verifies the embedded object with its maps pinned under `pin_path` (reusing maps
/// pinned there), pins its programs under this build's directory, removes other builds'
/// directories, and opens the programs from their pins. The object is returned to take the maps
/// from ([`MapSource::Object`]).
pub fn load(pin_path: &Path) -> Result<(Programs, Ebpf)> {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_path)
        .map_max_entries(MAP_FLOW_CACHE, flow_cache_entries())
        .load(EBPF_OBJECT)
        .map_err(|source| DatapathError::Load { path: pin_path.to_path_buf(), source: Box::new(source) })?;
    let dir = build_dir(pin_path);
    let fs_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DatapathError::Fs { op, path, source }
    };
    std::fs::create_dir_all(&dir).map_err(fs_err("create program pin directory", &dir))?;
    for name in PROGRAMS {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| DatapathError::Program {
                op: format!("find program {name}"),
                source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
            })?
            .try_into()
            .map_err(|source| DatapathError::Program { op: format!("program {name}"), source: Box::new(source) })?;
        program.load().map_err(|source| DatapathError::Program { op: format!("load program {name}"), source: Box::new(source) })?;
        let pin = dir.join(name);
        // A pin left by an interrupted earlier load of this build names a program no link runs.
        match std::fs::remove_file(&pin) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fs_err("replace program pin", &pin)(e)),
            _ => {}
        }
        program.pin(&pin).map_err(|source| DatapathError::Pin { path: pin.clone(), source: Box::new(source) })?;
    }
    remove_other_builds(pin_path);
    let mut programs = BTreeMap::new();
    for name in PROGRAMS {
        let pin = dir.join(name);
        let program = SchedClassifier::from_pin(&pin)
            .map_err(|source| DatapathError::Program { op: format!("open pinned program {}", pin.display()), source: Box::new(source) })?;
        programs.insert(name, program);
    }
    Ok((Programs(programs), ebpf))
}

/// Unpins the programs of other builds: links still running them keep them alive until they are
/// switched to this build's programs.
fn remove_other_builds(pin_path: &Path) {
    let own = build_id();
    let Ok(entries) = std::fs::read_dir(pin_path.join(PROGRAMS_DIR)) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_str() != Some(own.as_str()) {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not unpin an earlier build's programs");
            }
        }
    }
}

/// The maps pinned under `pin_path` whose layout (type, key size, value size, capacity, flags)
/// is not the one this build's programs were compiled for: (name, how it differs). Reusing such
/// a map would make the verifier refuse the programs, or worse, make them read the wrong bytes.
pub fn incompatible_pins(pin_path: &Path) -> Result<Vec<(String, String)>> {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| DatapathError::Fs {
        op: "parse the embedded eBPF object for",
        path: pin_path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut out = Vec::new();
    let mut names: Vec<&String> = obj.maps.keys().collect();
    names.sort();
    for name in names {
        let want = &obj.maps[name];
        if want.pinning() != aya_obj::maps::PinningType::ByName {
            continue;
        }
        let path = pin_path.join(name);
        if !path.exists() {
            continue;
        }
        let info = match aya::maps::MapInfo::from_pin(&path) {
            Ok(info) => info,
            Err(e) => {
                out.push((name.clone(), format!("unreadable ({e})")));
                continue;
            }
        };
        let kind = info.map_type().map_or(u32::MAX, |t| t as u32);
        let got = [kind, info.key_size(), info.value_size(), info.max_entries(), info.map_flags()];
        let expected = [want.map_type(), want.key_size(), want.value_size(), want.max_entries(), want.map_flags()];
        if got != expected {
            out.push((name.clone(), format!("pinned (type, key, value, entries, flags) {got:?}, this build {expected:?}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_id_is_stable_and_short() {
        let id = build_id();
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id, build_id());
    }

    #[test]
    fn every_program_of_the_object_is_known() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        let names: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        assert_eq!(names, PROGRAMS.into_iter().collect());
    }
}
