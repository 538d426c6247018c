//! What a validated request asks of the Plugin/Filter stack: the flags of
//! its call (nbdkit's `NBDKIT_FLAG_*` from the request's `NBD_CMD_FLAG_*`).

use super::{CmdFlags, Command, Valid};
use crate::backend::Flags;

impl Valid {
    /// The flags to pass to the stack's call for this request: FUA as
    /// sent; for WRITE_ZEROES, MAY_TRIM unless NO_HOLE and FAST_ZERO as
    /// sent; for BLOCK_STATUS, REQ_ONE as sent. Flags a command does not
    /// take never reach the stack (validation refused them, or, for FUA
    /// on READ, CACHE and FLUSH, nbdkit drops it).
    #[inline]
    pub fn call_flags(&self) -> Flags {
        let f = self.flags;
        let mut out = Flags::NONE;
        let mut set = |on: bool, flag: Flags| {
            if on {
                out = out.with(flag);
            }
        };
        match self.command {
            Command::Write | Command::Trim => set(f.contains(CmdFlags::FUA), Flags::FUA),
            Command::WriteZeroes => {
                set(f.contains(CmdFlags::FUA), Flags::FUA);
                set(!f.contains(CmdFlags::NO_HOLE), Flags::MAY_TRIM);
                set(f.contains(CmdFlags::FAST_ZERO), Flags::FAST_ZERO);
            }
            Command::BlockStatus => set(f.contains(CmdFlags::REQ_ONE), Flags::REQ_ONE),
            Command::Read | Command::Flush | Command::Cache | Command::Disc => {}
        }
        out
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn valid(command: Command, flags: CmdFlags) -> Valid {
        Valid {
            command,
            cookie: 1,
            offset: 0,
            count: 512,
            flags,
        }
    }

    #[test]
    fn call_flags_follow_the_command() {
        let fua = CmdFlags::FUA;
        assert_eq!(valid(Command::Write, fua).call_flags(), Flags::FUA);
        assert_eq!(valid(Command::Trim, fua).call_flags(), Flags::FUA);
        assert_eq!(valid(Command::Read, fua).call_flags(), Flags::NONE);
        assert_eq!(valid(Command::Flush, fua).call_flags(), Flags::NONE);
        assert_eq!(valid(Command::Cache, fua).call_flags(), Flags::NONE);
        assert_eq!(
            valid(Command::WriteZeroes, CmdFlags::NONE).call_flags(),
            Flags::MAY_TRIM
        );
        assert_eq!(
            valid(
                Command::WriteZeroes,
                fua | CmdFlags::NO_HOLE | CmdFlags::FAST_ZERO
            )
            .call_flags(),
            Flags::FUA | Flags::FAST_ZERO
        );
        assert_eq!(
            valid(Command::BlockStatus, CmdFlags::REQ_ONE).call_flags(),
            Flags::REQ_ONE
        );
        assert_eq!(
            valid(Command::Write, CmdFlags::REQ_ONE).call_flags(),
            Flags::NONE
        );
    }
}
