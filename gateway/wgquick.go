package gateway

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// UserKeepalive is the PersistentKeepalive a user's configuration carries:
// it keeps the user's NAT mapping open so the gateway can reach it.
const UserKeepalive = 25 * time.Second

// WGQuick renders the wg-quick configuration of a user peer. priv is the
// peer's private key when meshd generated it; nil when the user brought a
// public key, and the configuration then says where the key goes.
func WGQuick(r Record, gw Info, priv *wgtypes.Key) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# meshd gateway peer %s on gateway %s, created %s", r.ID(), gw.Node, r.Created.UTC().Format(time.RFC3339))
	if r.Expires != nil {
		fmt.Fprintf(&b, ", expires %s", r.Expires.UTC().Format(time.RFC3339))
	}
	b.WriteString("\n[Interface]\n")
	if priv != nil {
		fmt.Fprintf(&b, "PrivateKey = %s\n", priv)
	} else {
		fmt.Fprintf(&b, "# PrivateKey = <the private key whose public key is %s>\n", r.PublicKey)
	}
	fmt.Fprintf(&b, "Address = %s\n", netip.PrefixFrom(r.Address, 128))
	b.WriteString("\n[Peer]\n")
	fmt.Fprintf(&b, "PublicKey = %s\n", gw.PublicKey)
	fmt.Fprintf(&b, "Endpoint = %s\n", gw.Endpoint)
	allow := make([]string, len(r.Allow))
	for i, p := range r.Allow {
		allow[i] = p.String()
	}
	fmt.Fprintf(&b, "AllowedIPs = %s\n", strings.Join(allow, ", "))
	fmt.Fprintf(&b, "PersistentKeepalive = %d\n", int(UserKeepalive/time.Second))
	return b.String()
}
