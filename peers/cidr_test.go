package peers

import (
	"net/netip"
	"testing"
)

func TestParseIPv6Prefix(t *testing.T) {
	tests := []struct {
		in, err string
	}{
		{in: "fdaa::/16"},
		{in: "fdaa:0:1::/48"},
		{in: "::/0"},
		{in: "fdaa::1/128"},
		{in: "fdaa::1/16", err: "fdaa::1/16 has host bits set (want fdaa::/16)"},
		{in: "10.0.0.0/8", err: "10.0.0.0/8 is not IPv6"},
		{in: "::ffff:10.0.0.0/104", err: "::ffff:10.0.0.0/104 is not IPv6"},
		{in: "fe80::%eth0/64", err: `"fe80::%eth0/64" is not an IPv6 CIDR`},
		{in: "fdaa::", err: `"fdaa::" is not an IPv6 CIDR`},
		{in: "fdaa::/129", err: `"fdaa::/129" is not an IPv6 CIDR`},
		{in: "", err: `"" is not an IPv6 CIDR`},
	}
	for _, tt := range tests {
		p, err := ParseIPv6Prefix(tt.in)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tt.err {
			t.Errorf("ParseIPv6Prefix(%q) = %v, %q; want error %q", tt.in, p, got, tt.err)
		}
		if err == nil && p.String() != tt.in {
			t.Errorf("ParseIPv6Prefix(%q) = %s", tt.in, p)
		}
	}
	if err := CheckIPv6Prefix(netip.Prefix{}); err == nil || err.Error() != "invalid Prefix is not a CIDR" {
		t.Errorf("CheckIPv6Prefix(zero) = %v", err)
	}
}
