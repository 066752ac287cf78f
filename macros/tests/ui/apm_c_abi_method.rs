use std::sync::Arc;

struct Service;

impl Service {
    #[apm_tap::apm(c_abi)]
    async fn size(self: Arc<Self>) -> u64 {
        0
    }
}

fn main() {}
