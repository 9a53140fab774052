//! Adam for the MLP head, one pass over each parameter per step.
//!
//! Why not `candle_nn::AdamW`: it makes each step out of about ten whole-tensor operations
//! (`m * beta1`, `g * (1 - beta1)`, their sum, ...), each allocating and writing a tensor the
//! size of the parameter, and the first layer of a head on 6,912 columns has 7 million. Under
//! `perf` those passes, their allocations and page clearing were over half of a fit's time, the
//! products under a quarter. This does the same arithmetic element by element, in the same
//! order and with the same f32 constants (candle's `x * c` is `x * c + 0`, `x + c` is
//! `x * 1 + c`), so a fit gives the same bits as with candle's optimizer
//! (`same_bits_as_candle_adamw` below), and writes the parameter in place.

use std::cell::RefCell;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Var};
use candle_nn::ParamsAdamW;
use llmembed_core::{Error, Result};

/// Adam (AdamW's form, weight decay as candle applies it) over a fixed set of f32 parameters.
pub(crate) struct Adam {
    vars: Vec<Var>,
    /// First and second moments per parameter, as flat vectors in the parameter's order.
    moments: Vec<(Vec<f32>, Vec<f32>)>,
    params: ParamsAdamW,
    step: i32,
}

impl Adam {
    pub(crate) fn new(vars: Vec<Var>, params: ParamsAdamW) -> Adam {
        let moments = vars
            .iter()
            .map(|v| (vec![0f32; v.elem_count()], vec![0f32; v.elem_count()]))
            .collect();
        Adam {
            vars,
            moments,
            params,
            step: 0,
        }
    }

    /// Computes the gradients of `loss` and takes one step.
    pub(crate) fn backward_step(&mut self, loss: &candle_core::Tensor) -> Result<()> {
        let grads = loss
            .backward()
            .map_err(|e| Error::compute("mlp backward", e))?;
        self.step(&grads)
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let p = &self.params;
        // The constants as candle's affine ops make them: f64 arithmetic, then cast to f32.
        let c = StepConsts {
            beta1: p.beta1 as f32,
            one_minus_beta1: (1.0 - p.beta1) as f32,
            beta2: p.beta2 as f32,
            one_minus_beta2: (1.0 - p.beta2) as f32,
            scale_m: (1.0 / (1.0 - p.beta1.powi(self.step))) as f32,
            scale_v: (1.0 / (1.0 - p.beta2.powi(self.step))) as f32,
            decay: (1.0 - p.lr * p.weight_decay) as f32,
            eps: p.eps as f32,
            lr: p.lr as f32,
        };
        for (var, (m, v)) in self.vars.iter().zip(&mut self.moments) {
            let Some(g) = grads.get(var) else {
                continue;
            };
            let op = AdamUpdate {
                c: &c,
                moments: RefCell::new((m.as_mut_slice(), v.as_mut_slice())),
            };
            var.as_tensor()
                .inplace_op2(g, &op)
                .map_err(|e| Error::compute("mlp adam step", e))?;
        }
        Ok(())
    }
}

struct StepConsts {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    scale_m: f32,
    scale_v: f32,
    decay: f32,
    eps: f32,
    lr: f32,
}

/// One parameter's update, run by candle on the parameter's storage (so it is written in
/// place) with the gradient's storage beside it.
struct AdamUpdate<'a> {
    c: &'a StepConsts,
    moments: RefCell<(&'a mut [f32], &'a mut [f32])>,
}

impl InplaceOp2 for AdamUpdate<'_> {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        grad: &CpuStorage,
        grad_l: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(theta), CpuStorage::F32(grad)) = (dst, grad) else {
            candle_core::bail!("adam-update: parameters and gradients must be f32");
        };
        let (Some((t0, t1)), Some((g0, g1))) =
            (dst_l.contiguous_offsets(), grad_l.contiguous_offsets())
        else {
            candle_core::bail!("adam-update: parameter or gradient not contiguous");
        };
        let theta = &mut theta[t0..t1];
        let grad = &grad[g0..g1];
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        if grad.len() != theta.len() || m.len() != theta.len() {
            candle_core::bail!(
                "adam-update: {} parameters, {} gradients, {} moments",
                theta.len(),
                grad.len(),
                m.len()
            );
        }
        let c = self.c;
        for (((t, &g), m), v) in theta
            .iter_mut()
            .zip(grad)
            .zip(m.iter_mut())
            .zip(v.iter_mut())
        {
            // candle_nn::AdamW::step, term by term.
            let next_m = (*m * c.beta1 + 0.0) + (g * c.one_minus_beta1 + 0.0);
            let next_v = (*v * c.beta2 + 0.0) + ((g * g) * c.one_minus_beta2 + 0.0);
            let m_hat = next_m * c.scale_m + 0.0;
            let v_hat = next_v * c.scale_v + 0.0;
            let decayed = *t * c.decay + 0.0;
            let adjusted = m_hat / (v_hat.sqrt() * 1.0 + c.eps);
            *t = decayed - (adjusted * c.lr + 0.0);
            *m = next_m;
            *v = next_v;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};
    use rand::{Rng, SeedableRng};

    use super::Adam;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// A small two-layer fit, twenty steps, with candle's AdamW and with `Adam`: the weights
    /// must be the same bits after every step (weight decay on and off, values of every sign,
    /// zeros among the gradients: ReLU's).
    #[test]
    fn same_bits_as_candle_adamw() {
        let dev = Device::Cpu;
        for weight_decay in [0.0, 0.01] {
            let params = ParamsAdamW {
                lr: 1e-3,
                weight_decay,
                ..ParamsAdamW::default()
            };
            let make = || {
                let w1 = Var::from_vec(values(24 * 10, 1), (24, 10), &dev).unwrap();
                let b1 = Var::from_vec(values(24, 2), 24, &dev).unwrap();
                let w2 = Var::from_vec(values(3 * 24, 3), (3, 24), &dev).unwrap();
                vec![w1, b1, w2]
            };
            let ours_vars = make();
            let ref_vars = make();
            let mut ours = Adam::new(ours_vars.clone(), params.clone());
            let mut reference = AdamW::new(ref_vars.clone(), params.clone()).unwrap();
            let loss = |vars: &[Var], step: u64| {
                let x = Tensor::from_vec(values(16 * 10, 100 + step), (16, 10), &dev).unwrap();
                let y: Vec<u32> = (0..16).map(|i| ((i as u64 + step) % 3) as u32).collect();
                let y = Tensor::from_vec(y, 16, &dev).unwrap();
                let h = x
                    .matmul(&vars[0].as_tensor().t().unwrap())
                    .unwrap()
                    .broadcast_add(vars[1].as_tensor())
                    .unwrap()
                    .relu()
                    .unwrap();
                let logits = h.matmul(&vars[2].as_tensor().t().unwrap()).unwrap();
                candle_nn::loss::cross_entropy(&logits, &y).unwrap()
            };
            let bits = |vars: &[Var]| -> Vec<u32> {
                vars.iter()
                    .flat_map(|v| {
                        v.as_tensor()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap()
                    })
                    .map(f32::to_bits)
                    .collect()
            };
            for step in 0..20 {
                ours.backward_step(&loss(&ours_vars, step)).unwrap();
                reference.backward_step(&loss(&ref_vars, step)).unwrap();
                let (a, b) = (bits(&ours_vars), bits(&ref_vars));
                let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
                assert_eq!(
                    differ,
                    0,
                    "step {step}, weight decay {weight_decay}: {differ} of {} values differ",
                    a.len()
                );
            }
            // The fit moved the weights (the comparison is not of untouched values).
            assert_ne!(bits(&ours_vars), bits(&make()));
        }
    }
}
