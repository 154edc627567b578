package main

// setns(2) is not in the frozen syscall package's table; its number on linux/arm64.
const sysSetns = 268
