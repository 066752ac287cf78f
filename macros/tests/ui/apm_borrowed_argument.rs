#[apm_tap::apm]
async fn count(text: &str) -> usize {
    text.len()
}

fn main() {}
