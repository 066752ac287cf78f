#[apm_tap::apm(flatten = false, flatten = true)]
async fn twice() -> Result<u8, std::io::Error> {
    Ok(1)
}

fn main() {}
