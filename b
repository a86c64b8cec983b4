isr-h0 6
tokio-rt-worker 44
isr-store-write 75
isr-hits-0 873
