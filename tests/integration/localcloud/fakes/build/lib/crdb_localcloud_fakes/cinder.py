"""Cinder's logging fake volume driver, able to create bootable volumes from images.

The stock fake (shipped in the cinder wheel) inherits LVM's image path: it would download the
image, run qemu-img and copy onto a device that does not exist. Here an image "clones" instantly,
so boot-from-volume works; volumes keep the image metadata and store nothing.
"""
from cinder.tests import fake_driver


class InstantCloneFakeDriver(fake_driver.FakeLoggingVolumeDriver):
    def clone_image(self, context, volume, image_location, image_meta, image_service):
        return {}, True

    def copy_image_to_volume(self, context, volume, image_service, image_id, disable_sparse=False):
        return None

    def copy_volume_to_image(self, context, volume, image_service, image_meta):
        return None

    def _update_volume_stats(self):
        super()._update_volume_stats()
        # The stock fake reserves its whole (infinite) pool, which no scheduler can place on.
        self._stats["pools"][0]["reserved_percentage"] = 0
