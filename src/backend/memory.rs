//! An in-memory backend for tests and benchmarks.

use super::{Backend, FileKind, ObjectInfo};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryBackend {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A panic while holding the lock leaves the map itself consistent.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory".into()
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let path = kind.path(name);
        let mut m = self.lock();
        match m.get(&path) {
            Some(old) if kind.is_content_named() && old.len() == data.len() => Ok(()),
            Some(_) => Err(Error::AlreadyExists { path: path.into() }),
            None => {
                m.insert(path, data.to_vec());
                Ok(())
            }
        }
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let path = kind.path(name);
        self.lock()
            .get(&path)
            .cloned()
            .ok_or(Error::NotFound { object: path })
    }

    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let path = kind.path(name);
        let m = self.lock();
        let data = m.get(&path).ok_or_else(|| Error::NotFound {
            object: path.clone(),
        })?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(len) {
            Some(end) if end <= data.len() => {
                buf.clear();
                buf.extend_from_slice(&data[start..end]);
                Ok(())
            }
            _ => Err(Error::corrupt(
                path,
                "object is shorter than the range read",
            )),
        }
    }

    fn list_each(&self, kind: FileKind, f: &mut dyn FnMut(ObjectInfo) -> Result<()>) -> Result<()> {
        let prefix = format!("{}/", kind.dir());
        let listed: Vec<ObjectInfo> = self
            .lock()
            .iter()
            .filter(|(k, _)| kind != FileKind::Config && k.starts_with(&prefix))
            .map(|(k, v)| ObjectInfo::new(k.rsplit('/').next().unwrap_or(k), v.len() as u64))
            .collect();
        listed.into_iter().try_for_each(f)
    }

    fn size(&self, kind: FileKind, name: &str) -> Result<u64> {
        let path = kind.path(name);
        self.lock()
            .get(&path)
            .map(|v| v.len() as u64)
            .ok_or(Error::NotFound { object: path })
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        self.lock().remove(&kind.path(name));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        super::super::conformance::run(&super::MemoryBackend::new()).unwrap();
    }
}
