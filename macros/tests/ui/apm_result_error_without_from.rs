#[derive(Debug)]
struct MyError;

#[apm_tap::apm]
async fn parse(text: String) -> Result<u32, MyError> {
    text.parse().map_err(|_| MyError)
}

fn main() {}
