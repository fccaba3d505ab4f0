//! The gradient store of the patched candle-core (`vendor/README.md`): the first gradient of a
//! tensor is taken as is (no zeros allocated and added to), later ones are summed, and
//! subtraction's right-hand side gets the negated gradient, as in candle as shipped.

use candle_core::{Device, Tensor, Var};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// With candle 0.11.1 as shipped the gradient of `x` below is `zeros + broadcast(1)`, a fresh
/// contiguous tensor; with the patch it is the broadcast view itself (stride 0).
#[test]
fn the_first_gradient_is_taken_as_is() {
    let x = Var::from_vec(vec![1f32, 2., 3., 4., 5., 6.], (2, 3), &Device::Cpu).unwrap();
    let grads = x.sum_all().unwrap().backward().unwrap();
    let g = grads.get(&x).unwrap();
    assert_eq!(values(g), [1.0; 6]);
    assert!(
        !g.is_contiguous(),
        "the gradient store copied the first gradient into zeros: is the candle-core patch applied?"
    );
}

/// Every path of a tensor into the loss adds to its gradient, in any order, with signs:
/// loss = Σ (x·a + x·b − x·c + (d − x)) gives dx = a + b − c − 1, dd = 1.
#[test]
fn later_gradients_are_summed_with_their_signs() {
    let dev = Device::Cpu;
    let x = Var::from_vec(vec![0.5f32, -1.0, 2.0], 3, &dev).unwrap();
    let d = Var::from_vec(vec![3f32, 1.0, -2.0], 3, &dev).unwrap();
    let (a, b, c) = (
        Tensor::new(&[1f32, 2., 3.], &dev).unwrap(),
        Tensor::new(&[0.5f32, 0.25, -1.], &dev).unwrap(),
        Tensor::new(&[2f32, -3., 0.5], &dev).unwrap(),
    );
    let xa = x.mul(&a).unwrap();
    let xb = x.mul(&b).unwrap();
    let xc = x.mul(&c).unwrap();
    let rest = d.sub(&x).unwrap();
    let loss = ((xa + xb).unwrap() - xc).unwrap().add(&rest).unwrap();
    let grads = loss.sum_all().unwrap().backward().unwrap();
    let want: Vec<f32> = (0..3)
        .map(|i| {
            let v = |t: &Tensor| values(t)[i];
            v(&a) + v(&b) - v(&c) - 1.0
        })
        .collect();
    assert_eq!(values(grads.get(&x).unwrap()), want);
    assert_eq!(values(grads.get(&d).unwrap()), [1.0; 3]);
    // A tensor reached only through the right of a subtraction gets the negated gradient.
    let y = Var::from_vec(vec![1f32, 2.0], 2, &dev).unwrap();
    let grads = Tensor::new(&[5f32, 5.], &dev)
        .unwrap()
        .sub(&y)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(values(grads.get(&y).unwrap()), [-1.0; 2]);
}
