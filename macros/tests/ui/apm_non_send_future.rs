use std::rc::Rc;

#[apm_tap::apm]
async fn shared(value: u32) -> u32 {
    let kept = Rc::new(value);
    std::future::ready(()).await;
    *kept
}

fn main() {}
