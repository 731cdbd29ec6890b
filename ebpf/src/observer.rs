//! A read-only view of what a node has programmed, straight from its pinned maps: for another
//! process (a benchmark timing convergence, a status command) without loading programs or
//! reading the whole table.

use std::path::Path;

use crate::{
    maps::{read_ids, BackKey, KernelMaps, Maps},
    Backend, Error, Frontend,
};

pub struct Observer {
    maps: KernelMaps,
}

impl Observer {
    /// Opens the maps pinned in `pin_dir` (a running or stopped agent's).
    pub fn open(pin_dir: &Path) -> Result<Observer, Error> {
        Ok(Observer {
            maps: KernelMaps::pinned(pin_dir)?,
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

    /// How many frontends are programmed.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
