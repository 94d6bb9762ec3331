//! The smallest complete program: open a device, copy data in, run a host kernel on a stream, order a
//! second stream after it with an event, and copy the result out.
//!
//! `cargo run --release --example quickstart` (on the simulator unless an NPU with CANN is present).

use ascend::rt::{Context, Runtime, Stream};

fn main() -> ascend::rt::Result<()> {
    let rt = Runtime::get()?;
    println!("backend: {} ({})", rt.backend().name(), rt.reason());

    let ctx = Context::new(0)?;
    let compute = Stream::new(&ctx)?;
    let copy = Stream::new(&ctx)?;

    let n = 1 << 20;
    let x = compute.clone_htod(&vec![1.0f32; n])?;
    let mut y = compute.clone_htod(&vec![2.0f32; n])?;

    if rt.host_addressable() {
        // y = 3·x + y, as a host kernel ordered on `compute` (the simulator runs it on its own threads).
        let mut launch = compute.host_launch()?;
        let (xs, mut ys) = (launch.read(&x)?, launch.write(&mut y)?);
        launch.launch(move || {
            // SAFETY: inside the kernel both views are live and ordered after their writes.
            let (xs, ys) = unsafe { (xs.as_slice(), ys.as_mut_slice()) };
            ys.iter_mut().zip(xs).for_each(|(y, x)| *y += 3.0 * x);
        })?;
    } else {
        // Host kernels need memory the host can address; NPU kernels come from the kernels crate.
        println!("device memory is not host-addressable here: no host kernel (y stays 2)");
    }

    // Reading `y` on another stream: the buffer's tracking makes `copy` wait for the kernel.
    let mut out = copy.alloc::<f32>(n)?;
    copy.memcpy_dtod(&y, &mut out)?;
    let host = copy.clone_dtoh(&out)?;
    println!("y[0] = {}, y[n-1] = {}", host[0], host[n - 1]);
    Ok(())
}
