"""Per-channel mean and std of the datasets (in [0, 1] pixel units), CIFAR-10's class names and
the image file extensions read, in one place.

Pure Python, so that code which must not import TensorFlow (``dmr_keras.numpy_data`` on the GPU
machine, ``zoo.preprocessing`` when reading a model card) uses the same numbers as the tf.data
pipeline of ``dmr_keras.data``.
"""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# CIFAR-10's label order (sorted, so a train/<class>/ folder listing gives the same labels).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # image files of a folder dataset
