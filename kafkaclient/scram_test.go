package kafkaclient

import (
	"strings"
	"testing"
)

// The SCRAM client against the RFC 7677 SHA-256 test vector.
func TestSCRAMVector(t *testing.T) {
	c := newSCRAM(sha256Hash)
	c.randomNonce = func() (string, error) { return "rOprNGfwEbeRWgbNEkqO", nil }
	if err := c.Begin("user", "pencil", ""); err != nil {
		t.Fatal(err)
	}
	first, _ := c.Step("")
	if first != "n,,n=user,r=rOprNGfwEbeRWgbNEkqO" {
		t.Fatalf("client-first %q", first)
	}
	final, err := c.Step("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
	if err != nil {
		t.Fatal(err)
	}
	if want := "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="; final != want {
		t.Fatalf("client-final %q\nwant %q", final, want)
	}
	if _, err := c.Step("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="); err != nil || !c.Done() {
		t.Fatalf("server-final: %v done=%v", err, c.Done())
	}
	c2 := newSCRAM(sha256Hash)
	c2.randomNonce = c.randomNonce
	c2.Begin("user", "pencil", "")
	c2.Step("")
	c2.Step("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
	if _, err := c2.Step("v=AAAA"); err == nil || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("forged server signature accepted: %v", err)
	}
}
