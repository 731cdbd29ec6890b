//! A read-only view of what a node has programmed, straight from its pinned maps: for another
//! process (a benchmark timing convergence, a status command) without loading programs or
//! reading the whole table.

use std::path::{Path, PathBuf};

use aya::maps::{MapData, PerCpuArray};

use crate::{
    abi::DropReason,
    maps::{read_ids, BackKey, KernelMaps, Maps},
    Backend, Error, Frontend,
};

pub struct Observer {
    maps: KernelMaps,
    pin_dir: PathBuf,
}

impl Observer {
    /// Opens the maps pinned in `pin_dir` (a running or stopped agent's).
    pub fn open(pin_dir: &Path) -> Result<Observer, Error> {
        Ok(Observer {
            maps: KernelMaps::pinned(pin_dir)?,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// The backends programmed for `f` now (None: no such frontend).
    pub fn backends(&self, f: &Frontend) -> Result<Option<Vec<Backend>>, Error> {
        let Some(v) = self.maps.service(&f.key()) else {
            return Ok(None);
        };
        read_ids(&self.maps, &v)
            .into_iter()
            .map(|id| {
                self.maps
                    .backend(f.addr.is_ipv4(), id)
                    .map(BackKey::to_backend)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Drops and refusals so far, per reason (summed over CPUs).
    pub fn drops(&self) -> Result<Vec<(DropReason, u64)>, Error> {
        drops(&self.pin_dir)
    }

    /// How many frontends are programmed.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The drop counters pinned in `pin_dir`, per reason (summed over CPUs): only `mw_drops` is
/// opened (a metrics scrape needs nothing else).
pub fn drops(pin_dir: &Path) -> Result<Vec<(DropReason, u64)>, Error> {
    let path = pin_dir.join("mw_drops");
    let data = MapData::from_pin(&path).map_err(|e| Error::Pin {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let arr: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).map_err(Error::map("mw_drops"))?;
    DropReason::ALL
        .iter()
        .map(|r| {
            arr.get(&(*r as u32), 0)
                .map(|per_cpu| (*r, per_cpu.iter().sum()))
                .map_err(Error::map("mw_drops"))
        })
        .collect()
}
