//! `noextents`: hide the extents (block status) of the layer below, so
//! that the whole disk reads as allocated data. No parameters.

use crate::backend::{Context, Filter, FilterHandle, NextOpener, OpenArgs, Result};
use alloc::boxed::Box;

/// The noextents filter.
#[derive(Debug, Default)]
pub struct NoExtents;

impl Filter for NoExtents {
    fn name(&self) -> &'static str {
        "noextents"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit noextents filter")
    }
    fn blocks(&self) -> bool {
        false
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(NoExtentsHandle))
    }
}

struct NoExtentsHandle;

impl FilterHandle for NoExtentsHandle {
    fn can_extents(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
}
