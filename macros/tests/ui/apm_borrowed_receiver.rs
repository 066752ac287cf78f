struct Service;

impl Service {
    #[apm_tap::apm]
    async fn read(&self, len: usize) -> usize {
        len
    }
}

fn main() {}
