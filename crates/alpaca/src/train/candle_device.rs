//! Where a training step runs: our CPU graph ([`super::llama`]) or the candle engine
//! ([`super::candle`], behind the `candle` feature; CUDA behind `cuda`).
//!
//! Only the forward and backward move: the optimizer, the schedule, clipping, checkpoints and
//! metrics stay on the host over the same [`super::model::Param`] vectors, so a run resumes
//! and checkpoints identically whatever the device.

use std::fmt;
use std::str::FromStr;

use super::batch::Batch;
use super::model::{LossOut, TrainModel};
use crate::error::{Error, Result};

/// The device a training step runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrainDevice {
    /// Our hand-written forward and backward (the default).
    #[default]
    Cpu,
    /// The candle engine on the CUDA GPU with this ordinal (`cuda`, `cuda:1`).
    Cuda(usize),
    /// The candle engine on its CPU backend (`candle-cpu`): the same code as `Cuda`, for
    /// checking it where there is no GPU.
    CandleCpu,
}

impl FromStr for TrainDevice {
    type Err = Error;

    fn from_str(s: &str) -> Result<TrainDevice> {
        match s {
            "cpu" => Ok(TrainDevice::Cpu),
            "cuda" => Ok(TrainDevice::Cuda(0)),
            "candle-cpu" => Ok(TrainDevice::CandleCpu),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(i)) => Ok(TrainDevice::Cuda(i)),
                _ => Err(Error::InvalidArgument(format!(
                    "unknown device `{s}` (cpu, cuda, cuda:N, candle-cpu)"
                ))),
            },
        }
    }
}

impl fmt::Display for TrainDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainDevice::Cpu => f.write_str("cpu"),
            TrainDevice::Cuda(i) => write!(f, "cuda:{i}"),
            TrainDevice::CandleCpu => f.write_str("candle-cpu"),
        }
    }
}

impl TrainDevice {
    /// Fails when this build cannot run the device (`cuda` without the `cuda` feature,
    /// `candle-cpu` without `candle`).
    pub fn check_built(self) -> Result<()> {
        match self {
            TrainDevice::Cpu => Ok(()),
            TrainDevice::Cuda(_) if !cfg!(feature = "cuda") => Err(Error::NoCuda),
            TrainDevice::CandleCpu if !cfg!(feature = "candle") => Err(Error::InvalidArgument(
                "--device candle-cpu needs a build with --features candle".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Runs forward/backward passes on a [`TrainDevice`].
pub struct Stepper {
    #[cfg(feature = "candle")]
    engine: Option<super::candle::Engine>,
}

impl Stepper {
    /// Open the device (for CUDA: fails here when there is no GPU or driver).
    pub fn new(device: TrainDevice) -> Result<Stepper> {
        device.check_built()?;
        Ok(Stepper {
            #[cfg(feature = "candle")]
            engine: match device {
                TrainDevice::Cpu => None,
                d => Some(super::candle::Engine::new(d)?),
            },
        })
    }

    /// [`TrainModel::forward_backward`] on the device; gradients are added to the host
    /// parameters' `g`.
    pub fn forward_backward(
        &mut self,
        m: &mut TrainModel,
        b: &Batch,
        loss_scale: f32,
        seed: Option<u64>,
        backward: bool,
    ) -> Result<LossOut> {
        #[cfg(feature = "candle")]
        if let Some(e) = &mut self.engine {
            return e.forward_backward(m, b, loss_scale, seed, backward);
        }
        m.forward_backward(b, loss_scale, seed, backward)
    }

    /// The host parameters changed (an optimizer step): copies on the device are stale.
    pub fn params_changed(&mut self) {
        #[cfg(feature = "candle")]
        if let Some(e) = &mut self.engine {
            e.params_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        for (s, d) in [
            ("cpu", TrainDevice::Cpu),
            ("cuda", TrainDevice::Cuda(0)),
            ("cuda:2", TrainDevice::Cuda(2)),
            ("candle-cpu", TrainDevice::CandleCpu),
        ] {
            assert_eq!(s.parse::<TrainDevice>().expect("parses"), d);
        }
        assert_eq!(TrainDevice::Cuda(1).to_string(), "cuda:1");
        for bad in ["gpu", "cuda:", "cuda:x", ""] {
            assert!(bad.parse::<TrainDevice>().is_err(), "{bad}");
        }
    }

    #[test]
    fn devices_not_built_are_refused() {
        assert!(TrainDevice::Cpu.check_built().is_ok());
        assert_eq!(
            TrainDevice::Cuda(0).check_built().is_ok(),
            cfg!(feature = "cuda")
        );
        assert_eq!(
            TrainDevice::CandleCpu.check_built().is_ok(),
            cfg!(feature = "candle")
        );
    }
}
