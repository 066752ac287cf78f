use apm_tap::AsyncResult;

#[apm_tap::from_apm(end = end_len, output = usize)]
fn begin_len(text: String) -> AsyncResult<usize> {
    apm_tap::begin(async move { text.len() })
}

fn end_len(handle: AsyncResult<usize>) -> usize {
    handle.end().unwrap()
}

fn main() {}
