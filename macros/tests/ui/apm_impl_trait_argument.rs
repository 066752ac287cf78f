#[apm_tap::apm]
async fn show(value: impl std::fmt::Display + Send + 'static) -> String {
    value.to_string()
}

fn main() {}
