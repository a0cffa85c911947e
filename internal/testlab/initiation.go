package testlab

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Initiate starts a wireguard-go device of private key priv (over a
// channel TUN, with its real UDP socket) that initiates handshakes with a
// peer of public key resp at ep, about once a second, until the returned
// function stops it: real initiations, made by the real implementation,
// for tests that read or replay them.
func Initiate(t testing.TB, priv, resp wgtypes.Key, ep netip.AddrPort) (stop func()) {
	t.Helper()
	dev := device.NewDevice(tuntest.NewChannelTUN().TUN(), conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	cfg := fmt.Sprintf("private_key=%x\nlisten_port=0\npublic_key=%x\nendpoint=%s\nallowed_ip=10.0.0.2/32\npersistent_keepalive_interval=1\n",
		priv[:], resp[:], ep)
	if err := dev.IpcSet(cfg); err != nil {
		dev.Close()
		t.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		t.Fatal(err)
	}
	return dev.Close
}

// Initiation is one handshake initiation that wireguard-go with private
// key priv sends to a responder of public key resp (caught on loopback).
func Initiation(t testing.TB, priv, resp wgtypes.Key) []byte {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	defer Initiate(t, priv, resp, pc.LocalAddr().(*net.UDPAddr).AddrPort())()
	return ReadInitiation(t, pc)
}

// ReadInitiation reads datagrams from pc until a handshake initiation (148
// bytes, type 1) comes, for at most 10 seconds.
func ReadInitiation(t testing.TB, pc *net.UDPConn) []byte {
	t.Helper()
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	for {
		n, _, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no initiation from wireguard-go: %v", err)
		}
		if n == 148 && buf[0] == 1 {
			return append([]byte(nil), buf[:n]...)
		}
	}
}
