# Sourced by demo.sh and test.sh: as root, installs from Debian's packages
# what unionmount's commands and tests need when it is missing (fuse3, attr,
# acl; skopeo, umoci, docker-registry and fuse-overlayfs for the image
# and interoperability tests), and makes
# /dev/fuse usable by every user as Debian's udev rules do.
if [ "$(id -u)" = 0 ]; then
	missing=()
	command -v fusermount3 >/dev/null || missing+=(fuse3)
	command -v getfattr >/dev/null || missing+=(attr)
	command -v setfacl >/dev/null || missing+=(acl)
	# The image tests check our OCI output with the reference tools and
	# a real registry.
	command -v skopeo >/dev/null || missing+=(skopeo)
	command -v umoci >/dev/null || missing+=(umoci)
	command -v docker-registry >/dev/null || missing+=(docker-registry)
	command -v fuse-overlayfs >/dev/null || missing+=(fuse-overlayfs)
	if [ ${#missing[@]} -gt 0 ]; then
		echo "installing ${missing[*]} (apt-get)"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	[ -c /dev/fuse ] || mknod -m 0666 /dev/fuse c 10 229
	chmod 0666 /dev/fuse
fi
