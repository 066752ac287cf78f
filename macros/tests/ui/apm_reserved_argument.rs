#[apm_tap::apm]
async fn save(state: u32) -> u32 {
    state
}

fn main() {}
