use apm_tap::{AsyncCallback, AsyncResult, State};

#[apm_tap::from_apm(end = end_len, output = usize)]
fn begin_len(text: String, callback: AsyncCallback<usize>, state: State) -> AsyncResult<usize> {
    apm_tap::Builder::new().callback(callback).state(state).begin(async move { text.len() })
}

fn end_len(handle: AsyncResult<String>) -> usize {
    handle.end().unwrap().len()
}

fn main() {}
