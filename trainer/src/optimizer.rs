//! AdamW with its state in reach. libtorch's optimizer, as tch wraps it, keeps its moment estimates where they
//! cannot be saved, so a run resumed from a checkpoint used to restart them from zero and drift from the run it
//! continued. Here they are saved beside the weights and a resumed run carries on exactly.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use tch::{Kind, Tensor, nn};

/// The hyperparameters libtorch's AdamW defaults to, except the weight decay, which the caller sets.
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;
const STEP_KEY: &str = "step";

struct Parameter {
    name: String,
    value: Tensor,
    first_moment: Tensor,
    second_moment: Tensor,
}

/// AdamW (decoupled weight decay) over the trainable variables of a var store, in the order of their names.
pub struct AdamW {
    learning_rate: f64,
    weight_decay: f64,
    steps: i64,
    parameters: Vec<Parameter>,
}

impl AdamW {
    /// Optimises every variable of `vs` that requires a gradient now (freeze before building).
    pub fn new(vs: &nn::VarStore, learning_rate: f64, weight_decay: f64) -> Self {
        let mut variables: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, tensor)| tensor.requires_grad())
            .collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let parameters = variables
            .into_iter()
            .map(|(name, value)| Parameter {
                first_moment: value.zeros_like(),
                second_moment: value.zeros_like(),
                name,
                value,
            })
            .collect();
        Self {
            learning_rate,
            weight_decay,
            steps: 0,
            parameters,
        }
    }

    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.learning_rate = learning_rate;
    }

    /// Back-propagates `loss` from zeroed gradients and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor) {
        for parameter in &mut self.parameters {
            parameter.value.zero_grad();
        }
        loss.backward();
        self.steps += 1;
        let step_size = self.learning_rate / (1.0 - BETA1.powi(self.steps as i32));
        let second_correction = (1.0 - BETA2.powi(self.steps as i32)).sqrt();
        let decay = 1.0 - self.learning_rate * self.weight_decay;
        tch::no_grad(|| {
            for parameter in &mut self.parameters {
                let gradient = parameter.value.grad();
                if !gradient.defined() {
                    continue;
                }
                let _ = parameter.value.g_mul_scalar_(decay);
                let _ = parameter
                    .first_moment
                    .g_mul_scalar_(BETA1)
                    .g_add_(&(&gradient * (1.0 - BETA1)));
                let _ = parameter
                    .second_moment
                    .g_mul_scalar_(BETA2)
                    .g_add_(&(gradient.square() * (1.0 - BETA2)));
                let denominator = parameter.second_moment.sqrt() / second_correction + EPSILON;
                let _ = parameter
                    .value
                    .g_sub_(&(&parameter.first_moment / denominator * step_size));
            }
        });
    }

    /// Writes the moments and the step count to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, &Tensor)> = Vec::with_capacity(2 * self.parameters.len());
        for parameter in &self.parameters {
            named.push((format!("m.{}", parameter.name), &parameter.first_moment));
            named.push((format!("v.{}", parameter.name), &parameter.second_moment));
        }
        let steps = Tensor::from(self.steps);
        named.push((STEP_KEY.to_string(), &steps));
        Tensor::save_multi(&named, path)
            .with_context(|| format!("writing optimizer state {}", path.display()))
    }

    /// Restores what [`AdamW::save`] wrote for the same parameters; a state that does not fit is refused whole.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let saved: HashMap<String, Tensor> = Tensor::load_multi(path)
            .with_context(|| format!("reading optimizer state {}", path.display()))?
            .into_iter()
            .collect();
        let moment = |key: String, like: &Tensor| -> Result<Tensor> {
            let tensor = saved
                .get(&key)
                .with_context(|| format!("{} lacks `{key}`", path.display()))?;
            if tensor.size() != like.size() {
                bail!(
                    "{}: `{key}` has shape {:?}, the parameter {:?}",
                    path.display(),
                    tensor.size(),
                    like.size()
                );
            }
            Ok(tensor.to_kind(like.kind()))
        };
        let mut restored = Vec::with_capacity(self.parameters.len());
        for parameter in &self.parameters {
            restored.push((
                moment(format!("m.{}", parameter.name), &parameter.value)?,
                moment(format!("v.{}", parameter.name), &parameter.value)?,
            ));
        }
        let steps = saved
            .get(STEP_KEY)
            .with_context(|| format!("{} lacks `{STEP_KEY}`", path.display()))?
            .to_kind(Kind::Int64)
            .int64_value(&[]);
        for (parameter, (first, second)) in self.parameters.iter_mut().zip(restored) {
            parameter.first_moment = first;
            parameter.second_moment = second;
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;
    use tch::nn::OptimizerConfig;

    /// A least-squares problem with a fixed design, so every step has a real gradient.
    fn loss(weights: &Tensor) -> Tensor {
        let design = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([4, 3]) / 10.0;
        let target = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]);
        (design.matmul(weights) - target).square().mean(Kind::Float)
    }

    fn store() -> (nn::VarStore, Tensor) {
        let vs = nn::VarStore::new(Device::Cpu);
        let weights = vs
            .root()
            .var_copy("w", &Tensor::from_slice(&[0.3f32, -0.1, 0.2]));
        (vs, weights)
    }

    #[test]
    fn follows_libtorch_adamw() {
        let (vs, ours) = store();
        let mut optimizer = AdamW::new(&vs, 0.05, 0.01);
        let (reference_vs, reference) = store();
        let mut libtorch = nn::AdamW {
            wd: 0.01,
            ..Default::default()
        }
        .build(&reference_vs, 0.05)
        .unwrap();
        for _ in 0..50 {
            optimizer.backward_step(&loss(&ours));
            libtorch.backward_step(&loss(&reference));
        }
        let gap = (&ours - &reference).abs().max().double_value(&[]);
        assert!(gap < 1e-5, "{gap}");
        let (start, end) = (
            loss(&store().1).double_value(&[]),
            loss(&ours).double_value(&[]),
        );
        assert!(end < 0.9 * start, "loss {start} -> {end}");
    }

    #[test]
    fn a_saved_state_continues_exactly() {
        let (vs, straight) = store();
        let mut uninterrupted = AdamW::new(&vs, 0.05, 0.01);
        for _ in 0..20 {
            uninterrupted.backward_step(&loss(&straight));
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.pt");
        let (first_vs, first) = store();
        let mut before = AdamW::new(&first_vs, 0.05, 0.01);
        for _ in 0..10 {
            before.backward_step(&loss(&first));
        }
        before.save(&path).unwrap();
        let (resumed_vs, mut resumed) = store();
        tch::no_grad(|| resumed.copy_(&first));
        let mut after = AdamW::new(&resumed_vs, 0.05, 0.01);
        after.load(&path).unwrap();
        for _ in 0..10 {
            after.backward_step(&loss(&resumed));
        }
        assert_eq!(
            Vec::<f32>::try_from(&resumed).unwrap(),
            Vec::<f32>::try_from(&straight).unwrap()
        );
    }

    #[test]
    fn a_state_for_other_parameters_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.pt");
        let (vs, _) = store();
        AdamW::new(&vs, 0.05, 0.0).save(&path).unwrap();
        let other = nn::VarStore::new(Device::Cpu);
        let _ = other.root().var("w", &[4], nn::Init::Const(0.0));
        let error = AdamW::new(&other, 0.05, 0.0).load(&path).unwrap_err();
        assert!(format!("{error:#}").contains("shape"), "{error:#}");
    }
}
