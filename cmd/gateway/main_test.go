package main

import (
	"os"
	"testing"
)

// The tests never act on a gateway installed on the machine that runs them:
// the installed config and environment file are moved out of the way (a
// test that means them sets its own).
func TestMain(m *testing.M) {
	os.Setenv("GATEWAY_CONFIG", "/nonexistent/gateway-test/config.yaml")
	os.Setenv("GATEWAY_ENV_FILE", "/nonexistent/gateway-test/environment")
	os.Exit(m.Run())
}
