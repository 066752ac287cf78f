#[apm_tap::apm]
async fn echo<T: Send + 'static>(value: T) -> T {
    value
}

fn main() {}
