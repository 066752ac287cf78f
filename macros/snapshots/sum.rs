impl Store {
    pub async fn sum(self: Arc<Self>, count: usize) -> u32 {
        self.items.iter().take(count).sum()
    }
    #[allow(clippy::too_many_arguments)]
    pub fn begin_sum(
        self: &Arc<Self>,
        count: usize,
        callback: impl ::core::convert::Into<::apm_tap::AsyncCallback<u32>>,
        state: ::apm_tap::State,
    ) -> ::apm_tap::AsyncResult<u32> {
        let __apm_tap_this = ::core::clone::Clone::clone(self);
        let __apm_tap_future = Self::sum(__apm_tap_this, count);
        ::apm_tap::Builder::new()
            .callback(callback)
            .state(state)
            .begin(::apm_tap::__private::send_future(__apm_tap_future))
    }
    pub fn end_sum(
        handle: ::apm_tap::AsyncResult<u32>,
    ) -> ::core::result::Result<u32, ::apm_tap::Error> {
        handle.end()
    }
    pub fn blocking_sum(
        self: &Arc<Self>,
        count: usize,
    ) -> ::core::result::Result<u32, ::apm_tap::Error> {
        if let ::core::result::Result::Err(refused) = ::apm_tap::__private::may_block() {
            return ::core::result::Result::Err(refused);
        }
        Self::end_sum(
            Self::begin_sum(
                self,
                count,
                ::apm_tap::AsyncCallback::none(),
                ::apm_tap::State::none(),
            ),
        )
    }
}
