"""A recipe that declares what the diffusers docs' example code does gives the same pixels as that
code, written by hand, with CPU generators and the same batches."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import images_in_matrix_order, pixels

PROMPTS = [
    "cinematic photo of A beautiful sunset over mountains, 35mm photograph, film, professional, 4k, highly detailed",
    "cinematic film still of a cat basking in the sun on a roof in Turkey, highly detailed, film grain",
    "pixel-art a cozy coffee shop interior, low-res, blocky, pixel art style, 8-bit graphics",
]


def assert_same_pixels(folder, hand_images):
    files = images_in_matrix_order(folder)
    assert len(files) == len(hand_images)
    for path, image in zip(files, hand_images):
        assert np.array_equal(pixels(path), np.asarray(image.convert("RGB"))), path.name


def toml_list(values):
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def test_batch_doc_list_of_prompts_one_generator_each(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, recipe_runner_tiny_sd15):
    """Batch inference guide: pipeline(prompt=prompts, generator=[Generator.manual_seed(i) ...])."""
    import torch
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(recipe_runner_tiny_sd15, dtype=torch.float32)
    generator = [torch.Generator(device="cpu").manual_seed(i) for i in range(3)]
    hand = pipeline(prompt=PROMPTS, generator=generator, num_inference_steps=4).images

    recipe = recipe_runner_write_recipe(f"""
        name = "batch"
        [model]
        id = "{recipe_runner_tiny_sd15}"
        [params]
        num_inference_steps = 4
        [matrix]
        mode = "zip"
        prompts = {toml_list(PROMPTS)}
        seeds = [0, 1, 2]
        [run]
        batch_size = 3
    """)
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out").code == 0
    assert_same_pixels(tmp_path / "out" / "batch", hand)


@pytest.mark.slow
def test_efficient_diffusion_doc_vae_and_scheduler_swap_one_prompt_n_seeds(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, recipe_runner_tiny_sd15, recipe_runner_tiny_vae):
    """Effective and efficient diffusion: a better VAE, DPMSolverMultistepScheduler.from_config,
    get_inputs(batch_size=4): one prompt, generators seeded 0..3, in one batch."""
    import torch
    from diffusers import AutoencoderKL, DiffusionPipeline, DPMSolverMultistepScheduler

    prompt = "portrait photo of a old warrior chief"
    pipeline = DiffusionPipeline.from_pretrained(recipe_runner_tiny_sd15, dtype=torch.float32, use_safetensors=True)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    pipeline.vae = AutoencoderKL.from_pretrained(recipe_runner_tiny_vae, dtype=torch.float32)
    inputs = {"prompt": 4 * [prompt], "generator": [torch.Generator("cpu").manual_seed(i) for i in range(4)],
              "num_inference_steps": 5}
    hand = pipeline(**inputs).images

    recipe = recipe_runner_write_recipe(f"""
        name = "efficient"
        [model]
        id = "{recipe_runner_tiny_sd15}"
        [components.vae]
        id = "{recipe_runner_tiny_vae}"
        [scheduler]
        name = "DPMSolverMultistepScheduler"
        [params]
        num_inference_steps = 5
        [matrix]
        prompts = ["{prompt}"]
        seeds = 4
        [run]
        batch_size = 4
    """)
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out").code == 0
    assert_same_pixels(tmp_path / "out" / "efficient", hand)


@pytest.fixture
def input_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(7)
    paths = []
    for i, size in enumerate([(64, 64), (64, 64), (64, 64)]):
        path = tmp_path / "inputs" / f"input-{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.mark.slow
def test_batch_doc_image_to_image_sdxl_list_of_images(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, recipe_runner_tiny_sdxl, input_images):
    """Batch inference guide's image-to-image example, done right: an SDXL image-to-image pipeline,
    a list of input images with their prompts, strength 0.5, guidance 8.0, one generator each."""
    import torch
    from diffusers import AutoPipelineForImage2Image
    from diffusers.utils import load_image

    pipeline = AutoPipelineForImage2Image.from_pretrained(recipe_runner_tiny_sdxl, dtype=torch.float32)
    hand = pipeline(
        prompt=PROMPTS,
        image=[load_image(str(p)) for p in input_images],
        guidance_scale=8.0,
        strength=0.5,
        num_inference_steps=4,
        generator=[torch.Generator("cpu").manual_seed(i) for i in range(3)],
    ).images

    recipe = recipe_runner_write_recipe(f"""
        name = "img2img"
        [model]
        id = "{recipe_runner_tiny_sdxl}"
        task = "image-to-image"
        [params]
        strength = 0.5
        guidance_scale = 8.0
        num_inference_steps = 4
        [matrix]
        mode = "zip"
        prompts = {toml_list(PROMPTS)}
        images = {toml_list(["inputs/" + p.name for p in input_images])}
        seeds = [0, 1, 2]
        [run]
        batch_size = 3
    """)
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert_same_pixels(tmp_path / "out" / "img2img", hand)


def test_sdxl_docs_image_to_image_mistake_is_refused(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, recipe_runner_tiny_sdxl, input_images):
    """The guide's version (a text-to-image pipeline given image=) would silently ignore the image:
    a recipe cannot say that; task = "text-to-image" with images is an error."""
    recipe = recipe_runner_write_recipe(f"""
        [model]
        id = "{recipe_runner_tiny_sdxl}"
        [matrix]
        prompts = ["a"]
        images = ["inputs/input-0.png"]
    """)
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out")
    assert result.code == 2 and "text-to-image takes no input images" in result.err


@pytest.mark.slow
def test_inpainting_runs_with_masks(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, recipe_runner_tiny_sd15, input_images):
    import torch
    from diffusers import AutoPipelineForInpainting
    from diffusers.utils import load_image
    from PIL import Image

    mask = tmp_path / "inputs" / "mask.png"
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (16, 16, 48, 48))
    m.save(mask)
    pipeline = AutoPipelineForInpainting.from_pretrained(recipe_runner_tiny_sd15, dtype=torch.float32)
    hand = pipeline(prompt=["a cat"], image=[load_image(str(input_images[0]))], mask_image=[m.convert("L")],
                    num_inference_steps=4, generator=[torch.Generator("cpu").manual_seed(3)]).images
    recipe = recipe_runner_write_recipe(f"""
        name = "inpaint"
        [model]
        id = "{recipe_runner_tiny_sd15}"
        task = "inpainting"
        [params]
        num_inference_steps = 4
        [matrix]
        prompts = ["a cat"]
        images = ["inputs/input-0.png"]
        mask_images = ["inputs/mask.png"]
        seeds = [3]
    """)
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert_same_pixels(tmp_path / "out" / "inpaint", hand)
