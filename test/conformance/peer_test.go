package conformance

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// Ports served by the peer; progs/common.h documents each.
const (
	portEcho  = 7001
	portHello = 7002
	portClose = 7003
	portUDP   = 7005
	portBack  = 7007
)

// startPeer serves the peer ports on every address with kernel sockets
// and returns a function that stops them.
func startPeer(addrs []string) (func(), error) {
	var (
		closers []io.Closer
		wg      sync.WaitGroup
	)
	stop := func() {
		for _, c := range closers {
			c.Close()
		}
		wg.Wait()
	}
	serve := func(ip string, port int, handle func(net.Conn)) error {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		closers = append(closers, l)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(30 * time.Second))
					handle(c)
				}()
			}
		}()
		return nil
	}
	for _, ip := range addrs {
		err := errors.Join(
			serve(ip, portEcho, func(c net.Conn) {
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}),
			serve(ip, portHello, func(c net.Conn) { c.Write([]byte("hello\n")) }),
			serve(ip, portClose, func(c net.Conn) {}),
			serve(ip, portBack, func(c net.Conn) {
				var p [2]byte
				if _, err := io.ReadFull(c, p[:]); err != nil {
					return
				}
				host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
				b, err := net.DialTimeout("tcp", net.JoinHostPort(host,
					strconv.Itoa(int(binary.BigEndian.Uint16(p[:])))), 5*time.Second)
				if err != nil {
					return
				}
				b.Write([]byte("hi"))
				b.Close()
			}),
		)
		if err != nil {
			stop()
			return nil, err
		}
		u, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(portUDP)))
		if err != nil {
			stop()
			return nil, err
		}
		closers = append(closers, u)
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 65536)
			for {
				n, from, err := u.ReadFrom(buf)
				if err != nil {
					return
				}
				u.WriteTo(buf[:n], from)
			}
		}()
	}
	return stop, nil
}
