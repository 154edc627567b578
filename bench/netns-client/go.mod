module keycutter.dev/bench/netns-client

go 1.21
